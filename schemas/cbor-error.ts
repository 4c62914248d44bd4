// cbor-x reports a bad input in terms of its own reading ("Offset is outside
// the bounds of the DataView"); a peer reading our error wants to know what
// was wrong with the bytes it sent.
export function cborFailure(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  if (/outside the bounds|Unexpected end|end of buffer|Insufficient data|Source is too short|offset is out of bounds/i.test(message)) return 'it ends in the middle of an item (truncated)';
  if (/Invalid typed array length|Array buffer allocation failed|Invalid array length|Invalid string length/i.test(message)) return 'a length in it is larger than the message';
  // cbor-x trips over a tagged item of the wrong type (a bignum tag on null, say) with a TypeError of its own.
  if (err instanceof TypeError) return 'a tagged item in it does not hold the type its tag requires';
  return message;
}
