// hetq extensions to hls4ml's nnet_utils (registered with backend.register_source; see
// flow/hls_ext.py). Compiles on its own with the ap_types headers.
//
// MSB-TMR weight words: a protected layer stores each N-bit weight in an N+2-bit word whose bits
// N+1, N and N-1 all hold the weight's MSB (sign) and bits N-2..0 the rest, exactly as the
// software weight-memory image (flow/image.py). Every product reads the word through a 2-of-3
// voter, so any single flip of a copy is masked.
//
// Binary layers: thresholds with a direction bit (batch-norm + sign folded to integers by
// flow/lower.py): out = 1 (+1) where acc >= thr (direction 1) or acc <= thr (direction 0).
#ifndef HETQ_NNET_H_
#define HETQ_NNET_H_

#include "ap_fixed.h"
#include "ap_int.h"
#include "hls_stream.h"
// hls4ml's nnet_common.h (PRAGMA_DATA_PACK) sits beside this header in a project
#if defined(__has_include)
#if __has_include("nnet_common.h")
#include "nnet_common.h"
#endif
#endif

namespace nnet {

// 2-of-3 majority of the three MSB copies of a stored word (N value bits, N+2 stored bits)
template <int N, class word_T> inline ap_uint<1> hetq_vote(word_T w) {
    const ap_uint<1> a = w[N + 1], b = w[N], c = w[N - 1];
    return (a & b) | (a & c) | (b & c);
}

// The voted N-bit two's complement weight of a stored word, as ap_fixed<N, I>
template <int N, int I, class word_T> inline ap_fixed<N, I> hetq_tmr_value(word_T w) {
    ap_uint<N> raw = w.range(N - 1, 0);
    raw[N - 1] = hetq_vote<N>(w);
    ap_fixed<N, I> v;
    v.range(N - 1, 0) = raw;
    return v;
}

namespace product {

// int x TMR-protected fixed-point weight
template <class x_T, class w_T, int N, int I> class hetq_tmr_mult {
  public:
    static auto product(x_T a, w_T w) -> decltype(a * ap_fixed<N, I>()) {
        #pragma HLS INLINE
        return a * hetq_tmr_value<N, I>(w);
    }
};

// int x TMR-protected binary weight (3 copies of one bit; 1 = +1, 0 = -1)
template <class x_T, class w_T> class hetq_tmr_weight_binary {
  public:
    static auto product(x_T a, w_T w) -> decltype(-a) {
        #pragma HLS INLINE
        if (hetq_vote<1>(w) == 0)
            return -a;
        else
            return a;
    }
};

// binary x TMR-protected binary weight: XNOR as +1 / -1. (hls4ml's own both_binary returns the
// XNOR bit and its dense output cast turns the popcount p into 2p - N, but only when the weight
// type is ap_uint<1>; a protected weight is ap_uint<3>, so the product gives +1 / -1 itself.)
template <class x_T, class w_T> class hetq_tmr_both_binary {
  public:
    static ap_int<2> product(x_T a, w_T w) {
        #pragma HLS INLINE
        return (a == hetq_vote<1>(w)) ? ap_int<2>(1) : ap_int<2>(-1);
    }
};

} // namespace product

// Batch-norm + sign of a binary layer as integer thresholds with a direction bit
template <class data_T, class thr_T, class dir_T, typename CONFIG_T>
void hetq_threshold(data_T data[CONFIG_T::n_in], ap_uint<1> res[CONFIG_T::n_in],
                    thr_T threshold[CONFIG_T::n_scale_bias], dir_T direction[CONFIG_T::n_scale_bias]) {
    #pragma HLS PIPELINE
    #pragma HLS ARRAY_PARTITION variable=res complete
    for (int ii = 0; ii < CONFIG_T::n_in; ii++) {
        int k = CONFIG_T::n_filt == -1 ? ii : ii % CONFIG_T::n_filt;
        res[ii] = direction[k] ? (data[ii] >= threshold[k]) : (data[ii] <= threshold[k]);
    }
}

// The same thresholds on a stream of channel-last packs (io_stream); the sign is written as -1 /
// +1 (res_T's value type signed), so that a following zero padding is read as 0 by the product.
template <class data_T, class res_T, class thr_T, class dir_T, typename CONFIG_T>
void hetq_threshold_stream(hls::stream<data_T> &data, hls::stream<res_T> &res,
                           thr_T threshold[CONFIG_T::n_scale_bias],
                           dir_T direction[CONFIG_T::n_scale_bias]) {
    #pragma HLS ARRAY_PARTITION variable=threshold complete
    #pragma HLS ARRAY_PARTITION variable=direction complete
    for (int i = 0; i < CONFIG_T::n_in / data_T::size; i++) {
        #pragma HLS PIPELINE
        data_T in = data.read();
        res_T out;
#ifdef PRAGMA_DATA_PACK
        PRAGMA_DATA_PACK(out)
#endif
        for (int j = 0; j < data_T::size; j++) {
            #pragma HLS UNROLL
            int k = CONFIG_T::n_filt == -1 ? i * data_T::size + j : j % CONFIG_T::n_filt;
            bool up = direction[k] ? (in[j] >= threshold[k]) : (in[j] <= threshold[k]);
            out[j] = up ? typename res_T::value_type(1) : typename res_T::value_type(-1);
        }
        res.write(out);
    }
}

// ReActNet's RPReLU on a stream of channel-last packs: y = prelu(x - gamma, slope) + zeta, per
// channel, with the difference in CONFIG_T::shift_t and the product in CONFIG_T::accum_t (hetq
// gives both the exact width, so nothing rounds before the result type's own rounding).
template <class data_T, class res_T, class gamma_T, class slope_T, class zeta_T, typename CONFIG_T>
void hetq_rprelu_stream(hls::stream<data_T> &data, hls::stream<res_T> &res,
                        gamma_T gamma[CONFIG_T::n_chan], slope_T slope[CONFIG_T::n_chan],
                        zeta_T zeta[CONFIG_T::n_chan]) {
    #pragma HLS ARRAY_PARTITION variable=gamma complete
    #pragma HLS ARRAY_PARTITION variable=slope complete
    #pragma HLS ARRAY_PARTITION variable=zeta complete
    for (int i = 0; i < CONFIG_T::n_in / data_T::size; i++) {
        #pragma HLS PIPELINE
        data_T in = data.read();
        res_T out;
#ifdef PRAGMA_DATA_PACK
        PRAGMA_DATA_PACK(out)
#endif
        for (int j = 0; j < data_T::size; j++) {
            #pragma HLS UNROLL
            int c = (i * data_T::size + j) % CONFIG_T::n_chan;
            typename CONFIG_T::shift_t u = in[j] - gamma[c];
            typename CONFIG_T::accum_t y = u;
            if (u < 0)
                y = u * slope[c];
            out[j] = y + zeta[c];
        }
        res.write(out);
    }
}

} // namespace nnet

#endif
