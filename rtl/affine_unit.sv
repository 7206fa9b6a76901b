// Per-channel integer affine of a batch-norm that feeds no sign (ZOBNN's last batch-norm): output
// lane p of neuron fold nf is acc * scale + offset, exact, OUTBITS wide; a requant stage after it
// rounds and shifts. Multipliers and offsets live in parameter memories indexed by the fold,
// which a counter follows along the stream (NF beats per output pixel), as in threshold_unit.
module affine_unit #(
    parameter int    LANES       = 1,
    parameter int    NF          = 1,
    parameter int    INBITS      = 16,
    parameter int    MBITS       = 16,
    parameter int    OBITS       = 16,
    parameter int    OUTBITS     = 32,
    parameter        SCALE_FILE  = "",
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
  logic [LANES*MBITS-1:0] scale;
  logic [LANES*OBITS-1:0] offset;

  param_rom #(.DEPTH(NF), .LANES(LANES), .BITS(MBITS), .INIT_FILE(SCALE_FILE)) u_scale (
      .addr(nf), .rd_data(scale)
  );
  param_rom #(.DEPTH(NF), .LANES(LANES), .BITS(OBITS), .INIT_FILE(OFFSET_FILE)) u_offset (
      .addr(nf), .rd_data(offset)
  );

  assign out_valid = in_valid;
  assign in_ready = out_ready;

  for (genvar l = 0; l < LANES; l++) begin : g_lane
    logic signed [63:0] a, m, o, y;
    assign a = 64'($signed(in_data[l*INBITS+:INBITS]));
    assign m = 64'($signed(scale[l*MBITS+:MBITS]));
    assign o = 64'($signed(offset[l*OBITS+:OBITS]));
    assign y = a * m + o;
    assign out_data[l*OUTBITS+:OUTBITS] = y[OUTBITS-1:0];
    wire unused = &{1'b0, y[63:OUTBITS]};
  end

  always_ff @(posedge clk) begin
    if (rst) nf <= '0;
    else if (in_valid && out_ready) nf <= (nf == NFW'(NF - 1)) ? '0 : nf + 1'b1;
  end
endmodule
