// FIFO of whole feature maps on the shorter branch of a residual block, so that the branch that
// finishes first never stalls the other (DEPTH words of WIDTH bits). The storage is a memory with
// a synchronous read port (block RAM in synthesis; a stream_fifo's asynchronous read would make
// it LUT-RAM), followed by a three-entry output FIFO that keeps one read in flight: full
// throughput, three cycles from input to output.
module frame_fifo #(
    parameter int  WIDTH = 8,
    parameter int  DEPTH = 64,
    localparam int AW    = (DEPTH > 1) ? $clog2(DEPTH) : 1,
    localparam int CW    = $clog2(DEPTH + 1)
) (
    input  logic             clk,
    input  logic             rst,
    input  logic             in_valid,
    output logic             in_ready,
    input  logic [WIDTH-1:0] in_data,
    output logic             out_valid,
    input  logic             out_ready,
    output logic [WIDTH-1:0] out_data
);
  logic [WIDTH-1:0] mem [DEPTH];
  logic [AW-1:0] wp, rp;
  logic [CW-1:0] n;            // words in the memory
  logic rdv;                   // a read issued last cycle: rdata is valid now
  logic [WIDTH-1:0] rdata;
  logic [1:0] ocount;

  assign in_ready = (n != CW'(DEPTH));
  wire push = in_valid && in_ready;
  // a read is issued only if its word will find room in the output FIFO
  wire issue = (n != '0) && ({1'b0, ocount} + {2'b0, rdv} < 3'd3);

  always_ff @(posedge clk) begin
    if (push) mem[wp] <= in_data;
    if (issue) rdata <= mem[rp];
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      wp <= '0;
      rp <= '0;
      n <= '0;
      rdv <= 1'b0;
    end else begin
      if (push) wp <= (wp == AW'(DEPTH - 1)) ? '0 : wp + 1'b1;
      if (issue) rp <= (rp == AW'(DEPTH - 1)) ? '0 : rp + 1'b1;
      n <= n + CW'(push) - CW'(issue);
      rdv <= issue;
    end
  end

  /* verilator lint_off UNUSEDSIGNAL */
  logic out_fifo_ready;        // always 1 when rdv: the read reserved its room
  /* verilator lint_on UNUSEDSIGNAL */
  stream_fifo #(.WIDTH(WIDTH), .DEPTH(3)) u_out (
      .clk, .rst, .in_valid(rdv), .in_ready(out_fifo_ready), .in_data(rdata),
      .out_valid, .out_ready, .out_data, .count(ocount)
  );
endmodule
