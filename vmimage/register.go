package vmimage

// The formats' markers (Tart's layer media types, agoda's artifact type
// and layer media types, macvz's config media type) are disjoint, so at
// most one format matches an image that is not a deliberate mix.
func init() {
	Formats = append(Formats, TartFormat{}, AgodaFormat{}, LinuxFormat{})
}
