package imagestore

import "time"

// SetIngestExpiry changes how long partial downloads are kept, for a test.
func SetIngestExpiry(d time.Duration) (restore func()) {
	old := ingestExpiry
	ingestExpiry = d
	return func() { ingestExpiry = old }
}
