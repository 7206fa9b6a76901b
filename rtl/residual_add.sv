// Residual add of two streams of LANES elements per beat, exactly as the integer executor: the
// codes are aligned to the sum's fraction bits by left shifts (ASHIFT = frac_out - frac_a,
// BSHIFT = frac_out - frac_b, both >= 0) and added in OUTBITS signed bits, which the generator
// derives from the sum's bounds. A beat passes when both inputs offer one. Combinational.
module residual_add #(
    parameter int LANES   = 1,
    parameter int ABITS   = 8,
    parameter bit ASIGNED = 1'b1,
    parameter int BBITS   = 8,
    parameter bit BSIGNED = 1'b0,
    parameter int ASHIFT  = 0,
    parameter int BSHIFT  = 0,
    parameter int OUTBITS = 10
) (
    input  logic                      a_valid,
    output logic                      a_ready,
    input  logic [LANES*ABITS-1:0]    a_data,
    input  logic                      b_valid,
    output logic                      b_ready,
    input  logic [LANES*BBITS-1:0]    b_data,
    output logic                      out_valid,
    input  logic                      out_ready,
    output logic [LANES*OUTBITS-1:0]  out_data
);
  assign out_valid = a_valid && b_valid;
  assign a_ready = out_ready && b_valid;
  assign b_ready = out_ready && a_valid;

  for (genvar l = 0; l < LANES; l++) begin : g_lane
    logic signed [OUTBITS-1:0] x, y;
    if (ASIGNED) begin : g_as
      assign x = OUTBITS'($signed(a_data[l*ABITS+:ABITS])) <<< ASHIFT;
    end else begin : g_au
      assign x = OUTBITS'({1'b0, a_data[l*ABITS+:ABITS]}) <<< ASHIFT;
    end
    if (BSIGNED) begin : g_bs
      assign y = OUTBITS'($signed(b_data[l*BBITS+:BBITS])) <<< BSHIFT;
    end else begin : g_bu
      assign y = OUTBITS'({1'b0, b_data[l*BBITS+:BBITS]}) <<< BSHIFT;
    end
    assign out_data[l*OUTBITS+:OUTBITS] = x + y;
  end
endmodule
