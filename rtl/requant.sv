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

  localparam logic signed [63:0] LO64 = 64'(LO);
  localparam logic signed [63:0] HI64 = 64'(HI);
  localparam int RS = (SHIFT < 0) ? -SHIFT : 0;   // right shift
  localparam int LS = (SHIFT > 0) ? SHIFT : 0;    // left shift

  for (genvar l = 0; l < LANES; l++) begin : g_lane
    logic signed [63:0] x, q, rem, y;
    assign x = 64'($signed(in_data[l*INBITS+:INBITS]));
    always_comb begin
      if (RS == 0) begin
        q = x <<< LS;
        rem = '0;
        y = q;
      end else begin
        q = x >>> RS;
        rem = x - (q <<< RS);
        // round half to even
        y = (rem > (64'sd1 <<< (RS - 1)) || (rem == (64'sd1 <<< (RS - 1)) && q[0])) ? q + 1 : q;
      end
      if (y < LO64) y = LO64;
      if (y > HI64) y = HI64;
    end
    assign out_data[l*OUTBITS+:OUTBITS] = y[OUTBITS-1:0];
    wire unused = &{1'b0, y[63:OUTBITS], rem[0]};
  end
endmodule
