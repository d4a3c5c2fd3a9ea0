package integrity

import (
	"encoding/hex"
	"errors"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// FileType is the kind of a file system object.
type FileType uint8

// File types.
const (
	TypeNone FileType = iota // absent
	TypeFile
	TypeDir
	TypeSymlink
	TypeFIFO
	TypeSocket
	TypeChar
	TypeBlock
)

func (t FileType) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "directory"
	case TypeSymlink:
		return "symlink"
	case TypeFIFO:
		return "fifo"
	case TypeSocket:
		return "socket"
	case TypeChar:
		return "char-device"
	case TypeBlock:
		return "block-device"
	}
	return "none"
}

func typeOf(mode uint32) FileType {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return TypeFile
	case unix.S_IFDIR:
		return TypeDir
	case unix.S_IFLNK:
		return TypeSymlink
	case unix.S_IFIFO:
		return TypeFIFO
	case unix.S_IFSOCK:
		return TypeSocket
	case unix.S_IFCHR:
		return TypeChar
	case unix.S_IFBLK:
		return TypeBlock
	}
	return TypeNone
}

// Entry is the recorded state of one path. The zero Entry (Type TypeNone)
// means "absent".
type Entry struct {
	Type   FileType
	Mode   uint32 // permission bits, 07777
	UID    uint32
	GID    uint32
	Nlink  uint64
	Size   int64
	Mtime  int64 // Unix nanoseconds
	Ctime  int64 // Unix nanoseconds
	Inode  uint64
	Flags  uint32   // inode flags (FS_IOC_GETFLAGS) of files and directories, masked to flagMask
	Target string   // symlink target
	Xattrs string   // "name=hexvalue" sorted, joined by ","; "" when none
	Hash   [32]byte // content hash of a regular file; zero when not hashed
	Err    string   // why the entry is incomplete (e.g. unreadable)
}

// Exists reports whether the entry describes a present object.
func (e Entry) Exists() bool { return e.Type != TypeNone }

// HashHex is the content hash in hex, or "" when the file was not hashed.
func (e Entry) HashHex() string {
	if e.Hash == ([32]byte{}) {
		return ""
	}
	return hex.EncodeToString(e.Hash[:])
}

func entryFromStat(st *unix.Stat_t) Entry {
	return Entry{
		Type:  typeOf(st.Mode),
		Mode:  st.Mode & 0o7777,
		UID:   st.Uid,
		GID:   st.Gid,
		Nlink: uint64(st.Nlink),
		Size:  st.Size,
		Mtime: st.Mtim.Nano(),
		Ctime: st.Ctim.Nano(),
		Inode: st.Ino,
	}
}

// readXattrs lists and reads extended attributes with list/get (path or fd
// variants chosen by the caller). buf is scratch space and may grow.
func readXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error), buf *[]byte) (string, error) {
	n, err := list(*buf)
	if errors.Is(err, unix.ERANGE) {
		if n, err = list(nil); err == nil {
			*buf = make([]byte, n+256)
			n, err = list(*buf)
		}
	}
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
			return "", nil
		}
		return "", err
	}
	if n == 0 {
		return "", nil
	}
	names := strings.Split(strings.TrimRight(string((*buf)[:n]), "\x00"), "\x00")
	sort.Strings(names)
	var sb strings.Builder
	val := make([]byte, 256)
	for i, name := range names {
		m, err := get(name, val)
		if errors.Is(err, unix.ERANGE) {
			if m, err = get(name, nil); err == nil {
				val = make([]byte, m+64)
				m, err = get(name, val)
			}
		}
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return "", err
		}
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(name)
		sb.WriteByte('=')
		sb.WriteString(hex.EncodeToString(val[:m]))
	}
	return sb.String(), nil
}

func pathXattrs(path string, buf *[]byte) (string, error) {
	return readXattrs(
		func(b []byte) (int, error) { return unix.Llistxattr(path, b) },
		func(name string, b []byte) (int, error) { return unix.Lgetxattr(path, name, b) },
		buf)
}

func fdXattrs(fd int, buf *[]byte) (string, error) {
	return readXattrs(
		func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		func(name string, b []byte) (int, error) { return unix.Fgetxattr(fd, name, b) },
		buf)
}
