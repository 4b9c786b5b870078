package policy

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// MaxTextBytes bounds the free text a caller may attach to a decision (a
// retirement's or revocation's reason, a break-glass justification): it is
// stored with the record and written to the audit trail.
const MaxTextBytes = 512

// CheckText refuses free text longer than MaxTextBytes or holding anything
// but printable characters (no control characters, no invalid UTF-8), so a
// reason can neither bloat the records nor forge lines in a log. field
// names it in the refusal.
func CheckText(field, s string) error {
	if len(s) > MaxTextBytes {
		return reject(ReasonBadText, fmt.Sprintf("%s has %d bytes; at most %d are kept", field, len(s), MaxTextBytes))
	}
	if !utf8.ValidString(s) {
		return reject(ReasonBadText, field+" is not valid UTF-8")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return reject(ReasonBadText, fmt.Sprintf("%s holds the unprintable character %U; use plain text", field, r))
		}
	}
	return nil
}
