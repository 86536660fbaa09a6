package vmimage

// SetSpaceCheckEvery changes how much output passes between free-space
// checks, for a test.
func SetSpaceCheckEvery(n int64) (restore func()) {
	old := spaceCheckEvery
	spaceCheckEvery = n
	return func() { spaceCheckEvery = old }
}
