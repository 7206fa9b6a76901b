// K x K pool with stride K (floor mode) on a stream of an H x W x C feature map, channels
// innermost, LANES channels per beat: the maximum (SUM = 0; the executor's maxpool) or the exact
// sum of each window (SUM = 1, OUTBITS = BITS + 2 log2 K; the executor's avgpool keeps the mean
// as that sum with 2 log2 K more fraction bits). Keeps one row of partials; emits an output
// pixel's LANES channels on the beat that completes its window.
module pool2d #(
    parameter int H       = 8,
    parameter int W       = 8,
    parameter int C       = 16,
    parameter int K       = 2,
    parameter int LANES   = 1,
    parameter int BITS    = 4,
    parameter bit SIGNED  = 1'b0,
    parameter bit SUM     = 1'b0,
    parameter int OUTBITS = BITS
) (
    input  logic                     clk,
    input  logic                     rst,
    input  logic                     in_valid,
    output logic                     in_ready,
    input  logic [LANES*BITS-1:0]    in_data,
    output logic                     out_valid,
    input  logic                     out_ready,
    output logic [LANES*OUTBITS-1:0] out_data
);
  localparam int CGN = C / LANES;
  localparam int PW = W / K;
  localparam int PH = H / K;

  logic [LANES*OUTBITS-1:0] part [PW * CGN];
  int r, c, cg, rk, ck, pc;
  logic in_win, open_win, emit;
  logic [LANES*OUTBITS-1:0] m;

  assign in_win = (r < PH * K) && (c < PW * K);
  assign open_win = (rk == 0) && (ck == 0);
  assign emit = in_win && (rk == K - 1) && (ck == K - 1);
  assign out_valid = in_valid && emit;
  assign in_ready = emit ? out_ready : 1'b1;
  assign out_data = m;

  always_comb begin
    for (int l = 0; l < LANES; l++) begin
      logic [OUTBITS-1:0] x, p;
      logic gt;
      x = SIGNED ? OUTBITS'($signed(in_data[l*BITS+:BITS])) : OUTBITS'(in_data[l*BITS+:BITS]);
      p = part[pc*CGN+cg][l*OUTBITS+:OUTBITS];
      gt = SIGNED ? ($signed(x) > $signed(p)) : (x > p);
      if (SUM) m[l*OUTBITS+:OUTBITS] = (open_win ? '0 : p) + x;
      else m[l*OUTBITS+:OUTBITS] = (open_win || gt) ? x : p;
    end
  end

  wire take = in_valid && in_ready;
  always_ff @(posedge clk) begin
    if (take && in_win && !emit) part[pc*CGN+cg] <= m;
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      {r, c, cg, rk, ck, pc} <= '0;
    end else if (take) begin
      if (cg != CGN - 1) cg <= cg + 1;
      else begin
        cg <= 0;
        if (c != W - 1) begin
          c <= c + 1;
          ck <= (ck == K - 1) ? 0 : ck + 1;
          pc <= (ck == K - 1) ? pc + 1 : pc;
        end else begin
          c <= 0;
          ck <= 0;
          pc <= 0;
          r <= (r == H - 1) ? 0 : r + 1;
          rk <= (r == H - 1 || rk == K - 1) ? 0 : rk + 1;
        end
      end
    end
  end
endmodule
