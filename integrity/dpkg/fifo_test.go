package dpkg

import "golang.org/x/sys/unix"

func mkfifo(path string) error {
	_ = unix.Unlink(path)
	return unix.Mkfifo(path, 0o644)
}
