// 2-of-3 majority voter: the read-path decoder of a triplicated MSB. Purely combinational,
// so protection adds no clock cycle.
module tmr_vote (
    input  logic a,
    input  logic b,
    input  logic c,
    output logic y
);
  assign y = (a & b) | (a & c) | (b & c);
endmodule
