// Ping-pong input buffer of one layer: holds N elements (a whole input vector, or a whole
// feature map in (row, column, channel) order). The writer fills one bank from the input stream,
// WLANES elements per beat, while the engine reads the other bank RLANES consecutive elements at
// a time; a bank changes hands when the writer has filled it and when the engine releases it.
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
  logic [BITS-1:0] mem0 [N];
  logic [BITS-1:0] mem1 [N];
  logic [1:0] full;
  logic wsel, rsel;
  logic [WW-1:0] wptr;

  assign in_ready = !full[wsel];
  assign rd_avail = full[rsel];
  wire push = in_valid && in_ready;
  wire last_word = (wptr == WW'(N / WLANES - 1));

  always_ff @(posedge clk) begin
    if (push) begin
      for (int l = 0; l < WLANES; l++) begin
        if (wsel) mem1[int'(wptr) * WLANES + l] <= in_data[l*BITS+:BITS];
        else mem0[int'(wptr) * WLANES + l] <= in_data[l*BITS+:BITS];
      end
    end
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      full <= '0;
      wsel <= 1'b0;
      rsel <= 1'b0;
      wptr <= '0;
    end else begin
      if (push) begin
        wptr <= last_word ? '0 : wptr + 1'b1;
        if (last_word) wsel <= !wsel;
      end
      if (rd_release) rsel <= !rsel;
      // a bank is set full by the writer and cleared by the reader, never both in one cycle
      for (int b = 0; b < 2; b++) begin
        if (push && last_word && wsel == b[0]) full[b] <= 1'b1;
        else if (rd_release && rsel == b[0]) full[b] <= 1'b0;
      end
    end
  end

  always_comb begin
    for (int r = 0; r < RLANES; r++) begin
      rd_data[r*BITS+:BITS] = rsel ? mem1[int'(rd_word) * RLANES + r]
                                   : mem0[int'(rd_word) * RLANES + r];
    end
  end
endmodule
