package control

import (
	"fmt"
	"os"

	"github.com/parryhq/parry/agent/api"
)

// Config is the `control:` section of parry.yaml: the socket's
// permissions and limits (docs/protocol.md, Limits).
type Config struct {
	AdminGroups    []string     `yaml:"admin_groups"`    // groups whose members may do everything (root always may)
	SocketGroup    string       `yaml:"socket_group"`    // group owning the socket, if it exists
	SocketMode     string       `yaml:"socket_mode"`     // octal, e.g. "0660"
	MaxConnections int          `yaml:"max_connections"` // concurrent connections
	MaxLineBytes   int          `yaml:"max_line_bytes"`  // longest request line, newline included
	Rate           float64      `yaml:"rate"`            // requests per second per peer (uid)
	Burst          int          `yaml:"burst"`           // requests a peer may send at once
	IdleTimeout    api.Duration `yaml:"idle_timeout"`    // close a connection idle this long
	WriteTimeout   api.Duration `yaml:"write_timeout"`   // close a connection whose peer does not read an answer for this long

	MaxConnectionsPerUID int `yaml:"max_connections_per_uid"` // concurrent connections of one uid other than root
	AdminReserve         int `yaml:"admin_reserve"`           // of max_connections, slots only root and admin_groups may take
}

// ParseMode parses control.socket_mode.
func ParseMode(s string) (os.FileMode, error) {
	var m uint32
	if _, err := fmt.Sscanf(s, "%o", &m); err != nil || m > 0o777 {
		return 0, fmt.Errorf("%q is not an octal file mode like 0660", s)
	}
	return os.FileMode(m), nil
}
