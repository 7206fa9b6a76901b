// Lane-count converter of a valid/ready stream of BITS-bit elements: IN_LANES elements per input
// beat to OUT_LANES per output beat, element order kept. One of the two must divide the other
// (the generator chains two converters through their gcd otherwise).
//   narrowing (IN_LANES = R x OUT_LANES): each input beat leaves as R output beats, first
//     element first; the input is taken on the last of them (no storage);
//   widening (OUT_LANES = R x IN_LANES): R input beats are gathered into one register, which is
//     offered downstream while the next group fills (one output beat of storage).
module stream_lanes #(
    parameter int IN_LANES  = 2,
    parameter int OUT_LANES = 1,
    parameter int BITS      = 8
) (
    input  logic                      clk,
    input  logic                      rst,
    input  logic                      in_valid,
    output logic                      in_ready,
    input  logic [IN_LANES*BITS-1:0]  in_data,
    output logic                      out_valid,
    input  logic                      out_ready,
    output logic [OUT_LANES*BITS-1:0] out_data
);
  if (IN_LANES % OUT_LANES != 0 && OUT_LANES % IN_LANES != 0) begin : g_bad_params
    $error("stream_lanes: IN_LANES and OUT_LANES must divide one another");
  end

  if (IN_LANES >= OUT_LANES) begin : g_narrow
    localparam int R = IN_LANES / OUT_LANES;
    localparam int CW = (R > 1) ? $clog2(R) : 1;
    logic [CW-1:0] k;
    wire last = (k == CW'(R - 1));
    assign out_valid = in_valid;
    assign in_ready = out_ready && last;
    assign out_data = in_data[k*OUT_LANES*BITS+:OUT_LANES*BITS];
    always_ff @(posedge clk) begin
      if (rst) k <= '0;
      else if (out_valid && out_ready) k <= last ? '0 : k + 1'b1;
    end
  end else begin : g_widen
    localparam int R = OUT_LANES / IN_LANES;
    localparam int CW = $clog2(R);
    logic [(OUT_LANES-IN_LANES)*BITS-1:0] gather;   // the group's first R-1 beats
    logic [OUT_LANES*BITS-1:0] full_q;
    logic [CW-1:0] k;
    logic have;                       // full_q holds a complete beat
    wire last = (k == CW'(R - 1));
    // the last input beat of a group can only enter when the output register is free
    assign in_ready = !last || !have || out_ready;
    assign out_valid = have;
    assign out_data = full_q;
    wire take = in_valid && in_ready;
    always_ff @(posedge clk) begin
      if (rst) begin
        k <= '0;
        have <= 1'b0;
      end else begin
        if (out_valid && out_ready) have <= 1'b0;
        if (take) begin
          if (!last) gather[k*IN_LANES*BITS+:IN_LANES*BITS] <= in_data;
          k <= last ? '0 : k + 1'b1;
          if (last) begin
            full_q <= {in_data, gather};
            have <= 1'b1;
          end
        end
      end
    end
  end
endmodule
