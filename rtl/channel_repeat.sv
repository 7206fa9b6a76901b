// Channel repetition (x.repeat(1, TIMES, 1, 1)) on a stream of pixels of C channels, channels
// innermost, LANES channels per beat: each pixel's CGN = C / LANES beats are kept and sent TIMES
// times in order (output channel j is input channel j mod C). The next pixel is taken once the
// last copy has left, so the output runs at one beat per cycle and the input at 1 / TIMES.
module channel_repeat #(
    parameter int C     = 16,
    parameter int TIMES = 2,
    parameter int LANES = 1,
    parameter int BITS  = 8
) (
    input  logic                  clk,
    input  logic                  rst,
    input  logic                  in_valid,
    output logic                  in_ready,
    input  logic [LANES*BITS-1:0] in_data,
    output logic                  out_valid,
    input  logic                  out_ready,
    output logic [LANES*BITS-1:0] out_data
);
  localparam int CGN = C / LANES;

  logic [LANES*BITS-1:0] buffer [CGN];
  int fill, rd, copy;
  logic full;

  // filling: the first copy passes through as it arrives; later copies come from the buffer
  assign full = (fill == CGN);
  assign in_ready = !full && out_ready;
  assign out_valid = full ? 1'b1 : in_valid;
  assign out_data = full ? buffer[rd] : in_data;

  always_ff @(posedge clk) begin
    if (!full && in_valid && out_ready) buffer[fill] <= in_data;
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      {fill, rd, copy} <= '0;
    end else if (!full) begin
      if (in_valid && out_ready) begin
        fill <= fill + 1;
        if (fill == CGN - 1) begin
          rd <= 0;
          copy <= 1;
          if (TIMES == 1) fill <= 0;
        end
      end
    end else if (out_ready) begin
      if (rd != CGN - 1) rd <= rd + 1;
      else begin
        rd <= 0;
        if (copy == TIMES - 1) begin
          copy <= 0;
          fill <= 0;
        end else copy <= copy + 1;
      end
    end
  end
endmodule
