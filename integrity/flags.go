package integrity

import (
	"errors"
	"strings"

	"golang.org/x/sys/unix"
)

// Inode flags (FS_IOC_GETFLAGS, what lsattr shows) that are recorded and
// compared: the ones chattr sets. Flags the file system manages itself
// (extents, inline data, encryption, verity, casefold, huge file, index)
// are left out: they change without anyone asking and mean nothing to an
// admin.
// The bits are those of <linux/fs.h> (FS_IMMUTABLE_FL 0x10 ...), which
// x/sys does not export.
var flagNames = []struct {
	bit    uint32
	letter byte
	name   string
}{
	{0x10, 'i', "immutable"},
	{0x20, 'a', "append-only"},
	{0x40, 'd', "no-dump"},
	{0x80, 'A', "no-atime"},
	{0x8, 'S', "synchronous-updates"},
	{0x10000, 'D', "synchronous-directory-updates"},
	{0x1, 's', "secure-deletion"},
	{0x2, 'u', "undeletable"},
	{0x4, 'c', "compressed"},
	{0x400, 'm', "no-compression"},
	{0x4000, 'j', "data-journaling"},
	{0x8000, 't', "no-tail-merging"},
	{0x20000, 'T', "top-of-directory-hierarchy"},
	{0x800000, 'C', "no-copy-on-write"},
	{0x20000000, 'P', "project-inheritance"},
	{0x02000000, 'x', "dax"},
}

var flagMask = func() uint32 {
	var m uint32
	for _, f := range flagNames {
		m |= f.bit
	}
	return m
}()

// fdFlags reads the inode flags of the open file fd, masked to flagMask.
// File systems without them (ENOTTY, EINVAL, EOPNOTSUPP, e.g. older tmpfs,
// procfs) give 0 without an error.
func fdFlags(fd int) (uint32, error) {
	// The kernel reads and writes an int here, whatever the ioctl's name says.
	v, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	switch {
	case err == nil:
		return v & flagMask, nil
	case errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
		return 0, nil
	}
	return 0, err
}

// dirFlags opens the directory path (never following a symlink) for its flags.
func dirFlags(path string) (uint32, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return fdFlags(fd)
}

// FlagsString is the flags as lsattr letters ("ia"), "" when none.
func FlagsString(flags uint32) string {
	var b strings.Builder
	for _, f := range flagNames {
		if flags&f.bit != 0 {
			b.WriteByte(f.letter)
		}
	}
	return b.String()
}

// flagsDetail says in words what changed: "immutable flag set; append-only
// flag cleared".
func flagsDetail(old, new uint32) string {
	var parts []string
	for _, f := range flagNames {
		switch {
		case new&f.bit != 0 && old&f.bit == 0:
			parts = append(parts, f.name+" flag set")
		case old&f.bit != 0 && new&f.bit == 0:
			parts = append(parts, f.name+" flag cleared")
		}
	}
	return strings.Join(parts, "; ")
}
