// Broadcast of one valid/ready stream to two consumers (a residual block's main path and its
// shortcut). A beat passes when both consumers take it in the same cycle, so neither sees it
// twice: a_valid waits for b_ready and b_valid for a_ready. The consumers' ready must not
// depend on their valid (true of frame_buffer, stream_fifo and every module that buffers).
module stream_fork #(
    parameter int WIDTH = 8
) (
    input  logic             in_valid,
    output logic             in_ready,
    input  logic [WIDTH-1:0] in_data,
    output logic             a_valid,
    input  logic             a_ready,
    output logic [WIDTH-1:0] a_data,
    output logic             b_valid,
    input  logic             b_ready,
    output logic [WIDTH-1:0] b_data
);
  assign in_ready = a_ready && b_ready;
  assign a_valid = in_valid && b_ready;
  assign b_valid = in_valid && a_ready;
  assign a_data = in_data;
  assign b_data = in_data;
endmodule
