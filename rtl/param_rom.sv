// Small parameter memory (biases, thresholds, threshold directions): DEPTH words of LANES values
// of BITS bits, read combinationally (distributed RAM / LUTs). Stored plain, as in the software
// image; a fault campaign may flip its bits like a weight memory's.
module param_rom #(
    parameter int    DEPTH     = 1,
    parameter int    LANES     = 1,
    parameter int    BITS      = 16,
    parameter        INIT_FILE = "",
    localparam int   AW        = (DEPTH > 1) ? $clog2(DEPTH) : 1
) (
    input  logic [AW-1:0]         addr,
    output logic [LANES*BITS-1:0] rd_data
);
  // public: fault campaigns flip its bits through VPI
  logic [LANES*BITS-1:0] mem [DEPTH] /* verilator public_flat_rw */;

  initial begin
    if (INIT_FILE != "") $readmemh(INIT_FILE, mem);
  end

  assign rd_data = mem[addr];
endmodule
