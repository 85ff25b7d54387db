package ticketkeys

import (
	"os"

	"golang.org/x/sys/unix"
)

// memFile is a file that lives in memory only and is closed on exec (a
// supervisor passes it to workers explicitly).
func memFile() (*os.File, error) {
	fd, err := unix.MemfdCreate("loopmx-ticket-keys", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "ticket-keys"), nil
}
