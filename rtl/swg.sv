// Sliding-window generator: walks one input feature map (H x W x C, channels innermost) in the
// order the matrix-vector unit consumes it: for each output pixel, for each neuron fold, for
// each kernel row, kernel column and group of SIMD channels. Gives the buffer word to read
// (SIMD consecutive channels of one input pixel), whether that pixel lies in the zero padding,
// the weight-memory column sf, the neuron fold nf and the fold / image boundaries.
// A dense layer is the case H = W = K = 1, C = fan-in.
module swg #(
    parameter int  H      = 1,
    parameter int  W      = 1,
    parameter int  C      = 1,
    parameter int  K      = 1,
    parameter int  STRIDE = 1,
    parameter int  PAD    = 0,
    parameter int  OH     = 1,
    parameter int  OW     = 1,
    parameter int  SIMD   = 1,
    parameter int  NF     = 1,
    localparam int CG     = C / SIMD,
    localparam int SF     = K * K * CG,
    localparam int NWORDS = H * W * CG,
    localparam int RW     = (NWORDS > 1) ? $clog2(NWORDS) : 1,
    localparam int SFW    = (SF > 1) ? $clog2(SF) : 1,
    localparam int NFW    = (NF > 1) ? $clog2(NF) : 1
) (
    input  logic           clk,
    input  logic           rst,
    input  logic           step,
    output logic [RW-1:0]  word,
    output logic           pad,
    output logic [SFW-1:0] sf,
    output logic [NFW-1:0] nf,
    output logic           first,
    output logic           last,
    output logic           last_step
);
  int oh, ow, kh, kw, cg, nfi, sfi;
  int ih, iw;

  assign ih = oh * STRIDE + kh - PAD;
  assign iw = ow * STRIDE + kw - PAD;
  assign pad = (ih < 0) || (ih >= H) || (iw < 0) || (iw >= W);
  assign word = pad ? '0 : RW'((ih * W + iw) * CG + cg);
  assign sf = SFW'(sfi);
  assign nf = NFW'(nfi);
  assign first = (sfi == 0);
  assign last = (sfi == SF - 1);
  assign last_step = last && (nfi == NF - 1) && (ow == OW - 1) && (oh == OH - 1);

  always_ff @(posedge clk) begin
    if (rst) begin
      {oh, ow, kh, kw, cg, nfi, sfi} <= '0;
    end else if (step) begin
      sfi <= last ? 0 : sfi + 1;
      if (cg != CG - 1) cg <= cg + 1;
      else begin
        cg <= 0;
        if (kw != K - 1) kw <= kw + 1;
        else begin
          kw <= 0;
          if (kh != K - 1) kh <= kh + 1;
          else begin
            kh <= 0;
            if (nfi != NF - 1) nfi <= nfi + 1;
            else begin
              nfi <= 0;
              if (ow != OW - 1) ow <= ow + 1;
              else begin
                ow <= 0;
                oh <= (oh == OH - 1) ? 0 : oh + 1;
              end
            end
          end
        end
      end
    end
  end
endmodule
