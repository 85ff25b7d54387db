package loop

import (
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// openSpool makes an unnamed spool file in spool_dir (O_TMPFILE): it
// never appears in the directory, and its space is freed when it is
// closed, by a crash too.
func (s *Server) openSpool() (*os.File, error) { return openSpool(s.spoolDir) }

func openSpool(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "(spool file)")), nil
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
		return openSpoolFallback(dir)
	}
	return nil, &os.PathError{Op: "open O_TMPFILE", Path: dir, Err: err}
}
