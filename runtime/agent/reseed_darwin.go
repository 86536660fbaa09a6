package agent

import "os"

// reseedKernel writes seed to /dev/random: macOS mixes what is written
// there into its generator's pool at once (it has no reseed ioctl).
func reseedKernel(seed []byte) error {
	f, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(seed); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
