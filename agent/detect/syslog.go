package detect

// splitSyslog splits the header rsyslog and syslog-ng write before a
// message in a log file:
//
//	Dec  1 09:00:00 host sshd[1234]: message            (RFC 3164, Debian 12)
//	2026-12-01T09:00:00.123456+00:00 host sshd[1234]: message   (RFC 3339, Debian 13)
//
// It returns the program (the tag without [pid]) and the message. The
// header is written by the syslog daemon; the program name can be chosen by
// any local user (logger -t sshd), which is why a journal source, where the
// unit is set by journald, is preferred.
func splitSyslog(s string) (prog, msg string, ok bool) {
	i, ok := skipTimestamp(s)
	if !ok {
		return "", "", false
	}
	// host
	j := i
	for j < len(s) && s[j] != ' ' {
		j++
	}
	if j == i || j >= len(s) {
		return "", "", false
	}
	j++
	// tag: program, optional [pid], then ": "
	k := j
	for k < len(s) && s[k] != '[' && s[k] != ':' && s[k] != ' ' {
		k++
	}
	if k == j || k >= len(s) {
		return "", "", false
	}
	prog = s[j:k]
	if s[k] == '[' {
		k++
		for k < len(s) && s[k] >= '0' && s[k] <= '9' {
			k++
		}
		if k >= len(s) || s[k] != ']' {
			return "", "", false
		}
		k++
	}
	if k+1 >= len(s) || s[k] != ':' || s[k+1] != ' ' {
		return "", "", false
	}
	return prog, s[k+2:], true
}

// skipTimestamp returns the index after a "Mmm dd hh:mm:ss " or an RFC 3339
// timestamp and its space.
func skipTimestamp(s string) (int, bool) {
	if len(s) < 16 {
		return 0, false
	}
	if s[0] >= '0' && s[0] <= '9' {
		// 2026-12-01T09:00:00[.frac](Z|+hh:mm)
		if len(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
			return 0, false
		}
		for i := 19; i < len(s) && i < 64; i++ {
			if s[i] == ' ' {
				return i + 1, true
			}
		}
		return 0, false
	}
	// Dec  1 09:00:00
	if !isUpper(s[0]) || !isLower(s[1]) || !isLower(s[2]) || s[3] != ' ' ||
		!(s[4] == ' ' || isDigit(s[4])) || !isDigit(s[5]) || s[6] != ' ' ||
		!isDigit(s[7]) || !isDigit(s[8]) || s[9] != ':' || !isDigit(s[10]) || !isDigit(s[11]) ||
		s[12] != ':' || !isDigit(s[13]) || !isDigit(s[14]) || s[15] != ' ' {
		return 0, false
	}
	return 16, true
}

func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }
func isLower(c byte) bool { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
