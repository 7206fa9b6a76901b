// Weight memory: DEPTH words of LANES weights, read synchronously (one cycle), so synthesis
// infers block RAM. Each weight is stored in SBITS = WBITS (+2 when TMR) bits, exactly as in the
// software weight-memory image (flow/image.py): with TMR, bits WBITS+1, WBITS and WBITS-1 of a
// lane all hold the weight's MSB, bits WBITS-2..0 the rest, and a 2-of-3 voter decodes the MSB on
// the read path. rd_data carries the decoded WBITS-bit weights, lane l in bits [l*WBITS +: WBITS].
module weight_mem #(
    parameter int    DEPTH     = 16,
    parameter int    LANES     = 1,
    parameter int    WBITS     = 4,
    parameter bit    TMR       = 1'b0,
    parameter        INIT_FILE = "",
    localparam int   AW        = (DEPTH > 1) ? $clog2(DEPTH) : 1,
    localparam int   SBITS     = WBITS + (TMR ? 2 : 0)
) (
    input  logic                   clk,
    input  logic                   rd_en,
    input  logic [AW-1:0]          addr,
    output logic [LANES*WBITS-1:0] rd_data
);
  // public: fault campaigns flip its bits through VPI
  (* ram_style = "block" *) logic [LANES*SBITS-1:0] mem [DEPTH] /* verilator public_flat_rw */;
  logic [LANES*SBITS-1:0] q;

  initial begin
    if (INIT_FILE != "") $readmemh(INIT_FILE, mem);
  end

  always_ff @(posedge clk) begin
    if (rd_en) q <= mem[addr];
  end

  for (genvar l = 0; l < LANES; l++) begin : g_lane
    if (TMR) begin : g_tmr
      logic msb;
      tmr_vote u_vote (
          .a(q[l*SBITS+WBITS+1]),
          .b(q[l*SBITS+WBITS]),
          .c(q[l*SBITS+WBITS-1]),
          .y(msb)
      );
      if (WBITS > 1) begin : g_low
        assign rd_data[l*WBITS+:WBITS] = {msb, q[l*SBITS+:WBITS-1]};
      end else begin : g_bit
        assign rd_data[l*WBITS] = msb;
      end
    end else begin : g_plain
      assign rd_data[l*WBITS+:WBITS] = q[l*SBITS+:WBITS];
    end
  end
endmodule
