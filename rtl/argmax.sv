// Argmax over a stream of CLS class scores, LANES per beat: the first index of the largest
// score (as the software's argmax). Watches the handshake of the stream it is attached to and
// pulses idx_valid with the winning index on the vector's last beat.
module argmax #(
    parameter int  CLS   = 10,
    parameter int  LANES = 1,
    parameter int  BITS  = 16,
    localparam int IW    = (CLS > 1) ? $clog2(CLS) : 1
) (
    input  logic                  clk,
    input  logic                  rst,
    input  logic                  beat,
    input  logic [LANES*BITS-1:0] data,
    output logic                  idx_valid,
    output logic [IW-1:0]         idx
);
  localparam int BEATS = CLS / LANES;
  int b;
  logic signed [BITS-1:0] best;
  logic [IW-1:0] best_i;
  logic signed [BITS-1:0] nb;
  logic [IW-1:0] ni;

  always_comb begin
    nb = best;
    ni = best_i;
    for (int l = 0; l < LANES; l++) begin
      if ((b == 0 && l == 0) || $signed(data[l*BITS+:BITS]) > nb) begin
        nb = $signed(data[l*BITS+:BITS]);
        ni = IW'(b * LANES + l);
      end
    end
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      b <= 0;
      idx_valid <= 1'b0;
    end else begin
      idx_valid <= beat && (b == BEATS - 1);
      if (beat) begin
        best <= nb;
        best_i <= ni;
        idx <= ni;
        b <= (b == BEATS - 1) ? 0 : b + 1;
      end
    end
  end
endmodule
