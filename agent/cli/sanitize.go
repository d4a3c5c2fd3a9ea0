package cli

import (
	"fmt"
	"io"
)

// termSafe writes to a terminal (or a pipe) with control characters made
// visible: text that reaches parry's output from others — a signal's user
// name chosen by an attacker on a login form, a block's reason, a file name
// under a watched directory — must not move the cursor, clear the screen or
// set the window title of the admin reading it. Newline and tab pass (they
// are parry's own layout); every other C0 byte, DEL and the UTF-8 encoded C1
// controls (U+0080..U+009F, e.g. the one-byte CSI) become \u00XX, which is
// also what encoding/json would have written, so JSON output stays valid.
type termSafe struct{ w io.Writer }

func (t termSafe) Write(p []byte) (int, error) {
	clean := true
	for i := range p {
		if unsafeAt(p, i) {
			clean = false
			break
		}
	}
	if clean {
		return t.w.Write(p)
	}
	out := make([]byte, 0, len(p)+16)
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case !unsafeAt(p, i):
			out = append(out, c)
		case c == 0xC2: // a C1 control, two bytes in UTF-8
			out = fmt.Appendf(out, `\u%04x`, p[i+1])
			i++
		default:
			out = fmt.Appendf(out, `\u%04x`, c)
		}
	}
	if _, err := t.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

func unsafeAt(p []byte, i int) bool {
	c := p[i]
	if c < 0x20 && c != '\n' && c != '\t' || c == 0x7f {
		return true
	}
	return c == 0xC2 && i+1 < len(p) && p[i+1] >= 0x80 && p[i+1] <= 0x9f
}
