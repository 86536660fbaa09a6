package vmimage

// SetSpaceCheckEvery changes how much output passes between free-space
// checks, for a test.
func SetSpaceCheckEvery(n int64) (restore func()) {
	old := spaceCheckEvery
	spaceCheckEvery = n
	return func() { spaceCheckEvery = old }
}

// SetTartChunkSize changes the size of the Tart chunks Pack makes, for
// a test.
func SetTartChunkSize(n int64) (restore func()) {
	old := tartChunkSize
	tartChunkSize = n
	return func() { tartChunkSize = old }
}

// Hole handling, for its tests.
var (
	PunchHole = punchHole
	ZeroData  = zeroData
	IsHole    = isHole
)
