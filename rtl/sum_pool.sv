// Global sum pool (a global average pool whose 1/(H W) the next requantization absorbs, as the
// integer executor's sumpool node): the per-channel sum over an H x W x C feature map streamed
// in (row, column, channel) order, LANES channels per beat. Keeps C accumulators of OUTBITS
// (signed) bits; the C/LANES output beats leave with the last pixel's input beats (the sum
// then includes them), and the accumulators restart at 0 for the next image.
module sum_pool #(
    parameter int H       = 4,
    parameter int W       = 4,
    parameter int C       = 16,
    parameter int LANES   = 1,
    parameter int INBITS  = 8,
    parameter bit SIGNED  = 1'b0,
    parameter int OUTBITS = 12
) (
    input  logic                      clk,
    input  logic                      rst,
    input  logic                      in_valid,
    output logic                      in_ready,
    input  logic [LANES*INBITS-1:0]   in_data,
    output logic                      out_valid,
    input  logic                      out_ready,
    output logic [LANES*OUTBITS-1:0]  out_data
);
  localparam int CGN = C / LANES;
  localparam int P = H * W;

  logic [LANES*OUTBITS-1:0] acc [CGN];
  int p, cg;
  wire last_pixel = (p == P - 1);
  assign out_valid = in_valid && last_pixel;
  assign in_ready = last_pixel ? out_ready : 1'b1;

  logic [LANES*OUTBITS-1:0] sum;
  always_comb begin
    for (int l = 0; l < LANES; l++) begin
      logic signed [OUTBITS-1:0] x;
      x = SIGNED ? OUTBITS'($signed(in_data[l*INBITS+:INBITS]))
                 : OUTBITS'({1'b0, in_data[l*INBITS+:INBITS]});
      sum[l*OUTBITS+:OUTBITS] = (p == 0 ? '0 : acc[cg][l*OUTBITS+:OUTBITS]) + x;
    end
  end
  assign out_data = sum;

  wire take = in_valid && in_ready;
  always_ff @(posedge clk) begin
    if (rst) begin
      p <= 0;
      cg <= 0;
    end else if (take) begin
      acc[cg] <= sum;
      if (cg == CGN - 1) begin
        cg <= 0;
        p <= last_pixel ? 0 : p + 1;
      end else begin
        cg <= cg + 1;
      end
    end
  end
endmodule
