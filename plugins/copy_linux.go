package plugins

import (
	"os"

	"golang.org/x/sys/unix"
)

// copyFileRange copies the first n octets of src to dst's current
// position inside the kernel. handled is false when the kernel cannot do
// it for these two files (another file system, an old kernel) and nothing
// was copied: the caller then copies through memory.
func copyFileRange(dst, src *os.File, n int64) (done int64, err error, handled bool) {
	sc, err := src.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	dc, err := dst.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	var off int64
	var cerr error
	rerr := sc.Control(func(sfd uintptr) {
		werr := dc.Control(func(dfd uintptr) {
			for off < n {
				k, e := unix.CopyFileRange(int(sfd), &off, int(dfd), nil, int(min(n-off, 1<<30)), 0)
				if e == unix.EINTR {
					continue
				}
				if e != nil {
					cerr = e
					return
				}
				if k == 0 {
					cerr = os.ErrClosed // the file is shorter than its size: truncated under us
					return
				}
			}
		})
		if werr != nil {
			cerr = werr
		}
	})
	if rerr != nil {
		cerr = rerr
	}
	if cerr != nil && off == 0 {
		switch cerr {
		case unix.EXDEV, unix.ENOSYS, unix.EINVAL, unix.EOPNOTSUPP, unix.EBADF:
			return 0, nil, false
		}
	}
	if cerr != nil {
		return off, &os.PathError{Op: "copy_file_range", Path: dst.Name(), Err: cerr}, true
	}
	return off, nil, true
}
