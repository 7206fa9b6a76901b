// Requantization of LANES accumulators to activation codes, exactly as the integer executor:
// y = clamp(round_half_even(x * 2^SHIFT), LO, HI) with SHIFT = frac_out - frac_in. A lower bound
// LO = 0 is the ReLU. Combinational on a valid/ready stream.
module requant #(
    parameter int     LANES   = 1,
    parameter int     INBITS  = 24,
    parameter int     OUTBITS = 4,
    parameter int     SHIFT   = 0,
    parameter int     LO      = 0,
    parameter int     HI      = 15
) (
    input  logic                      in_valid,
    output logic                      in_ready,
    input  logic [LANES*INBITS-1:0]   in_data,
    output logic                      out_valid,
    input  logic                      out_ready,
    output logic [LANES*OUTBITS-1:0]  out_data
);
  assign out_valid = in_valid;
  assign in_ready = out_ready;

  function automatic longint rq(input longint x);
    longint y, q, rem, half;
    if (SHIFT >= 0) begin
      y = x <<< SHIFT;
    end else begin
      q = x >>> (-SHIFT);
      rem = x - (q <<< (-SHIFT));
      half = 64'sd1 <<< (-SHIFT - 1);
      y = (rem > half || (rem == half && q[0])) ? q + 1 : q;
    end
    if (y < 64'(LO)) y = 64'(LO);
    if (y > 64'(HI)) y = 64'(HI);
    return y;
  endfunction

  for (genvar l = 0; l < LANES; l++) begin : g_lane
    assign out_data[l*OUTBITS+:OUTBITS] = OUTBITS'(rq(64'($signed(in_data[l*INBITS+:INBITS]))));
  end
endmodule
