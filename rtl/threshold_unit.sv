// Batch-norm + sign of a binary layer, folded to integer thresholds: output lane p of neuron
// fold nf is +1 (bit 1) when acc >= thr (direction 1) or acc <= thr (direction 0), else -1 (0).
// Thresholds and directions live in parameter memories indexed by the fold, which a counter
// follows along the stream (NF beats per output pixel).
module threshold_unit #(
    parameter int    LANES    = 1,
    parameter int    NF       = 1,
    parameter int    ACCBITS  = 16,
    parameter int    TBITS    = 16,
    parameter        THR_FILE = "",
    parameter        DIR_FILE = "",
    localparam int   NFW      = (NF > 1) ? $clog2(NF) : 1
) (
    input  logic                     clk,
    input  logic                     rst,
    input  logic                     in_valid,
    output logic                     in_ready,
    input  logic [LANES*ACCBITS-1:0] in_data,
    output logic                     out_valid,
    input  logic                     out_ready,
    output logic [LANES-1:0]         out_data
);
  logic [NFW-1:0] nf;
  logic [LANES*TBITS-1:0] thr;
  logic [LANES-1:0] dir;

  param_rom #(.DEPTH(NF), .LANES(LANES), .BITS(TBITS), .INIT_FILE(THR_FILE)) u_thr (
      .addr(nf), .rd_data(thr)
  );
  param_rom #(.DEPTH(NF), .LANES(LANES), .BITS(1), .INIT_FILE(DIR_FILE)) u_dir (
      .addr(nf), .rd_data(dir)
  );

  assign out_valid = in_valid;
  assign in_ready = out_ready;

  for (genvar l = 0; l < LANES; l++) begin : g_lane
    longint a, t;
    assign a = 64'($signed(in_data[l*ACCBITS+:ACCBITS]));
    assign t = 64'($signed(thr[l*TBITS+:TBITS]));
    assign out_data[l] = dir[l] ? (a >= t) : (a <= t);
  end

  always_ff @(posedge clk) begin
    if (rst) nf <= '0;
    else if (in_valid && out_ready) nf <= (nf == NFW'(NF - 1)) ? '0 : nf + 1'b1;
  end
endmodule
