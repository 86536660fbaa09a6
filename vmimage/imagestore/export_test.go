package imagestore

import "time"

// SetIngestExpiry changes how long partial downloads are kept, for a test.
func SetIngestExpiry(d time.Duration) (restore func()) {
	old := ingestExpiry
	ingestExpiry = d
	return func() { ingestExpiry = old }
}

// WaitReleases waits for the disk chunk releases that pulls left running
// (releaseDiskChunksLater), so a test sees the store as they leave it.
func (s *Store) WaitReleases() { s.releasing.Wait() }

// PartialKey is the extraction snapshot a Tart pull keeps to resume.
var PartialKey = partialKey
