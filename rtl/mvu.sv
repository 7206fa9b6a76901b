// Matrix-vector unit of one convolution or dense layer, folded FINN-style: PE output channels in
// parallel, each over SIMD inputs per cycle, so one output pixel takes NF x SF cycles with
// NF = OUT / PE and SF = K*K*C / SIMD. The layer buffers its whole input (ping-pong, so the next
// image streams in while this one is computed), walks it with the sliding-window generator, reads
// PE x SIMD weights per cycle from its weight memory (block RAM, optional MSB TMR + voter) and
// emits PE accumulators per beat. Accumulators are ACCBITS wide, which the generator derives
// from the worst case, so they never overflow.
//
// MODE 0: signed n-bit weights x m-bit activations (ASIGNED tells the activations' sign).
// MODE 1: bipolar weights (1 bit, 1 = +1) x m-bit activations: add or subtract.
// MODE 2: bipolar weights x bipolar activations: XNOR-popcount (see xnor_popcount); a pixel in
//         the zero padding contributes 0 (its whole SIMD group is padding).
module mvu #(
    parameter int    H           = 1,
    parameter int    W           = 1,
    parameter int    C           = 16,
    parameter int    K           = 1,
    parameter int    STRIDE      = 1,
    parameter int    PAD         = 0,
    parameter int    OH          = 1,
    parameter int    OW          = 1,
    parameter int    OUT         = 16,
    parameter int    PE          = 1,
    parameter int    SIMD        = 1,
    parameter int    IN_LANES    = 1,
    parameter int    ABITS       = 4,
    parameter bit    ASIGNED     = 1'b0,
    parameter int    WBITS       = 4,
    parameter bit    TMR         = 1'b0,
    parameter int    MODE        = 0,
    parameter int    ACCBITS     = 24,
    parameter bit    HAS_BIAS    = 1'b0,
    parameter int    BBITS       = 16,
    parameter        WEIGHT_FILE = "",
    parameter        BIAS_FILE   = "",
    localparam int   NF          = OUT / PE,
    localparam int   CG          = C / SIMD,
    localparam int   SF          = K * K * CG,
    localparam int   DEPTH       = NF * SF,
    localparam int   AW          = (DEPTH > 1) ? $clog2(DEPTH) : 1,
    localparam int   NWORDS      = H * W * CG,
    localparam int   RW          = (NWORDS > 1) ? $clog2(NWORDS) : 1,
    localparam int   SFW         = (SF > 1) ? $clog2(SF) : 1,
    localparam int   NFW         = (NF > 1) ? $clog2(NF) : 1
) (
    input  logic                    clk,
    input  logic                    rst,
    input  logic                    in_valid,
    output logic                    in_ready,
    input  logic [IN_LANES*ABITS-1:0] in_data,
    output logic                    out_valid,
    input  logic                    out_ready,
    output logic [PE*ACCBITS-1:0]   out_data
);
  localparam int FDEPTH = 4;

  // ---- input buffer and sliding window --------------------------------------------------------
  logic avail, release_buf;
  logic [RW-1:0] word;
  logic [SIMD*ABITS-1:0] lanes;
  logic pad, first, last, last_step, issue;
  logic [SFW-1:0] sf;
  logic [NFW-1:0] nf;

  frame_buffer #(.N(H * W * C), .BITS(ABITS), .WLANES(IN_LANES), .RLANES(SIMD)) u_buf (
      .clk, .rst, .in_valid, .in_ready, .in_data,
      .rd_avail(avail), .rd_release(release_buf), .rd_word(word), .rd_data(lanes)
  );

  swg #(.H(H), .W(W), .C(C), .K(K), .STRIDE(STRIDE), .PAD(PAD), .OH(OH), .OW(OW), .SIMD(SIMD),
        .NF(NF)) u_swg (
      .clk, .rst, .step(issue), .word, .pad, .sf, .nf, .first, .last, .last_step
  );

  // ---- issue: one (pixel, nf, sf) step per cycle; a fold starts only if its result has room ----
  logic [$clog2(FDEPTH+1)-1:0] fcount;
  logic [1:0] pending;  // folds started whose result is not yet in the FIFO
  logic fifo_ready, push;
  wire credit = (32'(fcount) + 32'(pending)) < FDEPTH;
  assign issue = avail && (!first || credit);
  assign release_buf = issue && last_step;

  logic [PE*SIMD*WBITS-1:0] wdata;
  weight_mem #(.DEPTH(DEPTH), .LANES(PE * SIMD), .WBITS(WBITS), .TMR(TMR),
               .INIT_FILE(WEIGHT_FILE)) u_wmem (
      .clk, .rd_en(issue), .addr(AW'(int'(nf) * SF + int'(sf))), .rd_data(wdata)
  );

  // stage 1 registers, aligned with the weight memory's registered output
  logic v1, first1, last1, pad1;
  logic [NFW-1:0] nf1;
  logic [SIMD*ABITS-1:0] a1;
  always_ff @(posedge clk) begin
    if (rst) v1 <= 1'b0;
    else v1 <= issue;
    if (issue) begin
      a1 <= pad ? '0 : lanes;
      pad1 <= pad;
      first1 <= first;
      last1 <= last;
      nf1 <= nf;
    end
  end

  // ---- multiply-accumulate -----------------------------------------------------------------
  logic signed [ACCBITS-1:0] acc [PE];
  logic signed [ACCBITS-1:0] acc_next [PE];
  logic [PE*BBITS-1:0] bias_word;
  logic [PE*ACCBITS-1:0] result;

  if (HAS_BIAS) begin : g_bias
    param_rom #(.DEPTH(NF), .LANES(PE), .BITS(BBITS), .INIT_FILE(BIAS_FILE)) u_bias (
        .addr(nf1), .rd_data(bias_word)
    );
  end else begin : g_nobias
    assign bias_word = '0;
  end

  for (genvar p = 0; p < PE; p++) begin : g_pe
    logic signed [ACCBITS-1:0] dot;
    if (MODE == 2) begin : g_xnor
      logic signed [ACCBITS-1:0] pop;
      xnor_popcount #(.N(SIMD), .OBITS(ACCBITS)) u_pop (
          .a(a1), .w(wdata[p*SIMD+:SIMD]), .sum(pop)
      );
      assign dot = (PAD > 0 && pad1) ? '0 : pop;
    end else begin : g_mac
      // one product per SIMD lane (constant slices), then their sum
      logic signed [ACCBITS-1:0] prod [SIMD];
      for (genvar s = 0; s < SIMD; s++) begin : g_lane
        wire signed [ABITS:0] a = ASIGNED ? {a1[s*ABITS+ABITS-1], a1[s*ABITS+:ABITS]}
                                          : {1'b0, a1[s*ABITS+:ABITS]};
        if (MODE == 1) begin : g_binw
          // a named sign extension: Yosys reads -ACCBITS'(a) as a cast to -ACCBITS bits
          wire signed [ACCBITS-1:0] ax = ACCBITS'(a);
          assign prod[s] = wdata[p*SIMD+s] ? ax : -ax;
        end else begin : g_int
          assign prod[s] = ACCBITS'(a * $signed(wdata[(p*SIMD+s)*WBITS+:WBITS]));
        end
      end
      always_comb begin
        dot = '0;
        for (int s = 0; s < SIMD; s++) dot = dot + prod[s];
      end
    end
    assign acc_next[p] = (first1 ? '0 : acc[p]) + dot;
    assign result[p*ACCBITS+:ACCBITS] =
        acc_next[p] + ACCBITS'($signed(bias_word[p*BBITS+:BBITS]));
    always_ff @(posedge clk) begin
      if (v1) acc[p] <= acc_next[p];
    end
  end

  assign push = v1 && last1;
  // the credit check guarantees room in the FIFO, so its in_ready is not needed; nf1 only
  // addresses the bias memory; pad1 only matters in MODE 2
  wire unused = &{1'b0, fifo_ready, nf1, pad1};
  always_ff @(posedge clk) begin
    if (rst) pending <= '0;
    else pending <= pending + 2'(issue && first) - 2'(push);
  end

  stream_fifo #(.WIDTH(PE * ACCBITS), .DEPTH(FDEPTH)) u_out (
      .clk, .rst, .in_valid(push), .in_ready(fifo_ready), .in_data(result),
      .out_valid, .out_ready, .out_data, .count(fcount)
  );
endmodule
