package applelz4

// zeroBlock reports whether the LZ4 block src decodes to exactly n zero
// bytes after dict, without decoding it: every literal is zero and every
// match copies zeros (from this block's output, all zero so far, or from
// a zero part of dict), and the sequences add up to n. A disk's free
// space is such blocks, a literal zero and long matches at offset 1,
// which the decoder copies a byte at a time (0.33 GB/s here against 1.1
// GB/s for text): clearing the output instead takes the zero runs, 40%
// of a used disk, out of a pull's CPU. Anything else, including a block
// the decoder would refuse, is false, and the decoder runs on it: src
// comes from a registry.
func zeroBlock(src []byte, n int, dict []byte) bool {
	produced := 0
	i := 0
	// length reads a sequence length's extension bytes after its 4-bit
	// part v (15 means more follow).
	length := func(v int) (int, bool) {
		if v != 15 {
			return v, true
		}
		for {
			if i >= len(src) {
				return 0, false
			}
			b := src[i]
			i++
			v += int(b)
			if v > n {
				return 0, false
			}
			if b != 255 {
				return v, true
			}
		}
	}
	for i < len(src) {
		token := src[i]
		i++
		lit, ok := length(int(token >> 4))
		if !ok || lit > len(src)-i || produced+lit > n {
			return false
		}
		for _, b := range src[i : i+lit] {
			if b != 0 {
				return false
			}
		}
		i += lit
		produced += lit
		if i == len(src) {
			// The last sequence: literals only (the decoder refuses a
			// match length there).
			if token&15 != 0 {
				return false
			}
			break
		}
		if len(src)-i < 2 {
			return false
		}
		off := int(src[i]) | int(src[i+1])<<8
		i += 2
		m, ok := length(int(token & 15))
		if !ok || off == 0 {
			return false
		}
		m += 4
		if produced+m > n {
			return false
		}
		if start := produced - off; start < 0 {
			// The match begins in dict: the part of it there must be zero.
			if -start > len(dict) {
				return false
			}
			for _, b := range dict[len(dict)+start : len(dict)+min(start+m, 0)] {
				if b != 0 {
					return false
				}
			}
		}
		produced += m
	}
	return produced == n && len(src) > 0
}
