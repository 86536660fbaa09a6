//go:build !linux && !darwin

package vmimage

import "os"

// punchHole has no portable form: the range is overwritten with zeros
// where it holds data.
func punchHole(f *os.File, off, n int64) error { return zeroData(f, off, n) }

// nextData cannot tell holes from data here.
func nextData(*os.File, int64) (int64, bool) { return 0, false }
