// XNOR-popcount of N bipolar pairs (1 = +1, 0 = -1): the dot product of two bipolar vectors,
// 2 * popcount(a XNOR w) - N, as a signed OBITS-bit value.
module xnor_popcount #(
    parameter int N     = 8,
    parameter int OBITS = 16
) (
    input  logic [N-1:0]            a,
    input  logic [N-1:0]            w,
    output logic signed [OBITS-1:0] sum
);
  always_comb begin
    sum = -OBITS'(N);
    for (int i = 0; i < N; i++) begin
      sum = sum + OBITS'({a[i] ~^ w[i], 1'b0});
    end
  end
endmodule
