//go:build darwin

package vmimage

import (
	"os"

	"golang.org/x/sys/unix"
)

// punchHole turns [off, off+n) of f back into a hole (APFS's F_PUNCHHOLE),
// so that it reads as zeros and takes no space. APFS punches whole blocks
// only: the unaligned edges are written as zeros where they hold data.
func punchHole(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return err
	}
	bs := int64(st.Bsize)
	if bs <= 0 {
		bs = 4096
	}
	start := (off + bs - 1) / bs * bs
	end := (off + n) / bs * bs
	if end <= start {
		return zeroData(f, off, n)
	}
	if err := zeroData(f, off, start-off); err != nil {
		return err
	}
	if err := zeroData(f, end, off+n-end); err != nil {
		return err
	}
	// fpunchhole_t is {fp_flags uint32; reserved uint32; fp_offset off_t;
	// fp_length off_t}: the first 24 bytes of fstore_t have that layout,
	// and x/sys/unix passes fstore_t to fcntl by address.
	arg := unix.Fstore_t{Offset: start, Length: end - start}
	if err := unix.FcntlFstore(f.Fd(), unix.F_PUNCHHOLE, &arg); err != nil {
		if err == unix.ENOTSUP || err == unix.EINVAL {
			return zeroData(f, start, end-start)
		}
		return err
	}
	return nil
}
