// ReActNet's RPReLU as the integer network's rprelu op, per channel: u = x - shift; y = u << P
// where u >= 0, else u * slope (a P-fraction-bit code); plus offset; exact, OUTBITS wide (a
// requant after it rounds to the stream's codes). The three parameters live in memories indexed
// by the fold, which a counter follows along the stream (NF beats per pixel), as in affine_unit.
module rprelu_unit #(
    parameter int    LANES       = 1,
    parameter int    NF          = 1,
    parameter int    INBITS      = 16,
    parameter int    GBITS       = 16,
    parameter int    SBITS       = 16,
    parameter int    ZBITS       = 16,
    parameter int    P           = 16,
    parameter int    OUTBITS     = 48,
    parameter        SHIFT_FILE  = "",
    parameter        SLOPE_FILE  = "",
    parameter        OFFSET_FILE = "",
    localparam int   NFW         = (NF > 1) ? $clog2(NF) : 1
) (
    input  logic                     clk,
    input  logic                     rst,
    input  logic                     in_valid,
    output logic                     in_ready,
    input  logic [LANES*INBITS-1:0]  in_data,
    output logic                     out_valid,
    input  logic                     out_ready,
    output logic [LANES*OUTBITS-1:0] out_data
);
  logic [NFW-1:0] nf;
  logic [LANES*GBITS-1:0] shift;
  logic [LANES*SBITS-1:0] slope;
  logic [LANES*ZBITS-1:0] offset;

  param_rom #(.DEPTH(NF), .LANES(LANES), .BITS(GBITS), .INIT_FILE(SHIFT_FILE)) u_shift (
      .addr(nf), .rd_data(shift)
  );
  param_rom #(.DEPTH(NF), .LANES(LANES), .BITS(SBITS), .INIT_FILE(SLOPE_FILE)) u_slope (
      .addr(nf), .rd_data(slope)
  );
  param_rom #(.DEPTH(NF), .LANES(LANES), .BITS(ZBITS), .INIT_FILE(OFFSET_FILE)) u_offset (
      .addr(nf), .rd_data(offset)
  );

  assign out_valid = in_valid;
  assign in_ready = out_ready;

  for (genvar l = 0; l < LANES; l++) begin : g_lane
    logic signed [63:0] u, s, z, y;
    assign u = 64'($signed(in_data[l*INBITS+:INBITS])) - 64'($signed(shift[l*GBITS+:GBITS]));
    assign s = 64'($signed(slope[l*SBITS+:SBITS]));
    assign z = 64'($signed(offset[l*ZBITS+:ZBITS]));
    assign y = (u[63] ? u * s : u <<< P) + z;
    assign out_data[l*OUTBITS+:OUTBITS] = y[OUTBITS-1:0];
    wire unused = &{1'b0, y[63:OUTBITS]};
  end

  always_ff @(posedge clk) begin
    if (rst) nf <= '0;
    else if (in_valid && out_ready) nf <= (nf == NFW'(NF - 1)) ? '0 : nf + 1'b1;
  end
endmodule
