package plugins

import (
	"os"

	"golang.org/x/sys/unix"
)

// copyFileRange copies n octets of src from offset from to dst's current
// position inside the kernel. handled is false when the kernel cannot do
// it for these two files (another file system, an old kernel) and nothing
// was copied: the caller then copies through memory.
func copyFileRange(dst, src *os.File, from, n int64) (done int64, err error, handled bool) {
	sc, err := src.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	dc, err := dst.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	off := from
	end := from + n
	var cerr error
	rerr := sc.Control(func(sfd uintptr) {
		werr := dc.Control(func(dfd uintptr) {
			for off < end {
				k, e := unix.CopyFileRange(int(sfd), &off, int(dfd), nil, int(min(end-off, 1<<30)), 0)
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
	if cerr != nil && off == from {
		switch cerr {
		case unix.EXDEV, unix.ENOSYS, unix.EINVAL, unix.EOPNOTSUPP, unix.EBADF:
			return 0, nil, false
		}
	}
	if cerr != nil {
		return off - from, &os.PathError{Op: "copy_file_range", Path: dst.Name(), Err: cerr}, true
	}
	return off - from, nil, true
}
