// Ping-pong input buffer of one layer: holds N elements (a whole input vector, or a whole
// feature map in (row, column, channel) order). The writer fills one bank from the input stream,
// WLANES elements per beat, while the engine reads the other bank RLANES consecutive elements at
// a time (combinationally); a bank changes hands when the writer has filled it and when the
// engine releases it.
//
// Storage: M = max(WLANES, RLANES) narrow columns, each one memory of 2 x N/M elements with one
// write port and one asynchronous read port, so that synthesis maps it to distributed RAM
// (LUT-RAM) rather than flip-flops. Element e of bank b lives in column e % M at address
// b * N/M + e / M. A beat writes each column at most once (WLANES <= M) and a read touches each
// column at most once (RLANES <= M). M must divide N (both lane counts divide the channel count).
module frame_buffer #(
    parameter int  N      = 64,
    parameter int  BITS   = 4,
    parameter int  WLANES = 1,
    parameter int  RLANES = 1,
    localparam int WW     = ((N / WLANES) > 1) ? $clog2(N / WLANES) : 1,
    localparam int RW     = ((N / RLANES) > 1) ? $clog2(N / RLANES) : 1
) (
    input  logic                     clk,
    input  logic                     rst,
    input  logic                     in_valid,
    output logic                     in_ready,
    input  logic [WLANES*BITS-1:0]   in_data,
    output logic                     rd_avail,
    input  logic                     rd_release,
    input  logic [RW-1:0]            rd_word,
    output logic [RLANES*BITS-1:0]   rd_data
);
  localparam int M = (WLANES > RLANES) ? WLANES : RLANES;  // columns
  localparam int R = N / M;                                 // rows of a bank
  localparam int AW = $clog2(2 * R);                        // column address: bank * R + row
  localparam int OW = (M > 1) ? $clog2(M) : 1;              // column offset

  if (N % M != 0 || N % WLANES != 0 || N % RLANES != 0) begin : g_bad_params
    $error("frame_buffer: WLANES and RLANES must divide N, and so must max(WLANES, RLANES)");
  end

  logic [1:0] full;
  logic wsel, rsel;
  logic [WW-1:0] wptr;

  assign in_ready = !full[wsel];
  assign rd_avail = full[rsel];
  wire push = in_valid && in_ready;
  wire last_word = (wptr == WW'(N / WLANES - 1));

  // write position of the next beat's first element: column woff, address wa (bank included;
  // wa counts rows modulo 2 R, so it crosses into the other bank exactly when wsel does)
  logic [AW-1:0] wa;
  logic [OW-1:0] woff;
  wire [OW:0] woff_next = (OW + 1)'(woff) + (OW + 1)'(WLANES);
  wire wrap = woff_next >= (OW + 1)'(M);

  always_ff @(posedge clk) begin
    if (rst) begin
      full <= '0;
      wsel <= 1'b0;
      rsel <= 1'b0;
      wptr <= '0;
      wa <= '0;
      woff <= '0;
    end else begin
      if (push) begin
        wptr <= last_word ? '0 : wptr + 1'b1;
        if (last_word) wsel <= !wsel;
        woff <= wrap ? OW'(woff_next - (OW + 1)'(M)) : OW'(woff_next);
        if (wrap) wa <= (wa == AW'(2 * R - 1)) ? '0 : wa + 1'b1;
      end
      if (rd_release) rsel <= !rsel;
      // a bank is set full by the writer and cleared by the reader, never both in one cycle
      for (int b = 0; b < 2; b++) begin
        if (push && last_word && wsel == b[0]) full[b] <= 1'b1;
        else if (rd_release && rsel == b[0]) full[b] <= 1'b0;
      end
    end
  end

  // ---- per-column write enable, address and data -----------------------------------------------
  logic [M-1:0] we;
  logic [M*AW-1:0] waddr;
  logic [M*BITS-1:0] wdata;

  if (M % WLANES == 0) begin : g_wgroups
    // woff is a multiple of WLANES: a beat fills the group of columns starting at woff, and
    // lane l always lands in a column c with c % WLANES == l
    for (genvar c = 0; c < M; c++) begin : g_col
      assign we[c] = push && (woff == OW'(c - c % WLANES));
      assign waddr[c*AW+:AW] = wa;
      assign wdata[c*BITS+:BITS] = in_data[(c % WLANES)*BITS+:BITS];
    end
  end else begin : g_wwrap
    // M = RLANES, not a multiple of WLANES: a beat may wrap around into the next row
    for (genvar c = 0; c < M; c++) begin : g_col
      int lane;
      always_comb begin
        lane = c - int'(woff);
        if (lane < 0) lane = lane + M;
        we[c] = push && (lane < WLANES);
        waddr[c*AW+:AW] = (c < int'(woff)) ? wa + 1'b1 : wa;
        wdata[c*BITS+:BITS] = '0;
        for (int l = 0; l < WLANES; l++) begin
          if (lane == l) wdata[c*BITS+:BITS] = in_data[l*BITS+:BITS];
        end
      end
    end
  end

  // ---- per-column read address and lane select ---------------------------------------------------
  logic [M*AW-1:0] raddr;
  logic [M*BITS-1:0] rcol;
  wire [AW-1:0] rbase = rsel ? AW'(R) : '0;

  if (RLANES == M) begin : g_rstatic
    // lane r is column r, row rd_word
    for (genvar c = 0; c < M; c++) begin : g_col
      assign raddr[c*AW+:AW] = rbase + AW'(rd_word);
    end
    assign rd_data = rcol;
  end else if (M % RLANES == 0) begin : g_rgroups
    // M = WLANES: word rd_word is the group rd_word % G of row rd_word / G
    localparam int G = M / RLANES;
    wire [RW:0] rgroup = (RW + 1)'(rd_word) % (RW + 1)'(G);
    for (genvar c = 0; c < M; c++) begin : g_col
      assign raddr[c*AW+:AW] = rbase + AW'((RW + 1)'(rd_word) / (RW + 1)'(G));
    end
    always_comb begin
      rd_data = '0;
      for (int g = 0; g < G; g++) begin
        if (rgroup == (RW + 1)'(g)) rd_data = rcol[g*RLANES*BITS+:RLANES*BITS];
      end
    end
  end else begin : g_rwrap
    // M = WLANES, not a multiple of RLANES: a word may wrap around into the next row
    localparam int SW = $clog2(N + 1);  // holds N, so M too
    wire [SW-1:0] start = SW'(rd_word) * SW'(RLANES);
    wire [OW-1:0] roff = OW'(start % SW'(M));
    wire [AW-1:0] rrow = rbase + AW'(start / SW'(M));
    for (genvar c = 0; c < M; c++) begin : g_col
      assign raddr[c*AW+:AW] = (c < int'(roff)) ? rrow + 1'b1 : rrow;
    end
    always_comb begin
      for (int r = 0; r < RLANES; r++) begin
        rd_data[r*BITS+:BITS] = '0;
        for (int c = 0; c < M; c++) begin
          if ((int'(roff) + r) % M == c) rd_data[r*BITS+:BITS] = rcol[c*BITS+:BITS];
        end
      end
    end
  end

  // ---- the columns: one write port, one asynchronous read port each ------------------------------
  for (genvar c = 0; c < M; c++) begin : g_mem
    logic [BITS-1:0] mem [2 * R];
    always_ff @(posedge clk) begin
      if (we[c]) mem[waddr[c*AW+:AW]] <= wdata[c*BITS+:BITS];
    end
    assign rcol[c*BITS+:BITS] = mem[raddr[c*AW+:AW]];
  end
endmodule
