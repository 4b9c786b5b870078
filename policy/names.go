package policy

import (
	"fmt"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"

	steppolicy "github.com/smallstep/certificates/policy"
)

// maxDeviceIDLen bounds device identifiers (Intune and Apple use GUIDs/UDIDs).
const maxDeviceIDLen = 128

// NormalizeEmail returns addr as smimeca stores it: a bare RFC 5322
// addr-spec, trimmed and lower-cased. Users are compared by this form.
func NormalizeEmail(addr string) (string, error) {
	a := strings.TrimSpace(addr)
	if a == "" {
		return "", reject(ReasonBadUser, "the user e-mail address is empty")
	}
	parsed, err := mail.ParseAddress(a)
	if err != nil || parsed.Address != a || parsed.Name != "" {
		return "", reject(ReasonBadUser, fmt.Sprintf("%q is not a bare e-mail address (user@example.com)", a))
	}
	for i := 0; i < len(a); i++ {
		if a[i] >= utf8.RuneSelf {
			// rfc822Name is an IA5String: such an address could never be
			// put in a certificate (RFC 8398's SmtpUTF8Mailbox is not
			// supported).
			return "", reject(ReasonBadUser, fmt.Sprintf("%q is not an ASCII address: certificates carry ASCII addresses only (write an internationalised domain in its xn-- form)", a))
		}
	}
	return strings.ToLower(a), nil
}

// ValidateDeviceID reports whether id is usable as a device identifier:
// 1 to 128 printable characters without spaces.
func ValidateDeviceID(id string) error {
	if id == "" {
		return reject(ReasonBadDevice, "the device id is empty")
	}
	if len(id) > maxDeviceIDLen {
		return reject(ReasonBadDevice, fmt.Sprintf("the device id is longer than %d characters", maxDeviceIDLen))
	}
	for _, r := range id {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return reject(ReasonBadDevice, "the device id may only hold printable characters without spaces")
		}
	}
	return nil
}

// Domains decides which e-mail domains may receive certificates. It is built
// on step-ca's x509 name policy engine; an empty list allows every domain.
type Domains struct {
	engine *steppolicy.NamePolicyEngine
	list   []string
}

// NewDomains returns the domain rule for the given domains ("example.com"
// allows any mailbox at example.com; a leading "@" is accepted).
func NewDomains(domains []string) (*Domains, error) {
	d := &Domains{}
	if len(domains) == 0 {
		return d, nil
	}
	eng, err := steppolicy.New(steppolicy.WithPermittedEmailAddresses(domains...))
	if err != nil {
		return nil, fmt.Errorf("policy: allowed e-mail domains: %w", err)
	}
	d.engine = eng
	d.list = append(d.list, domains...)
	return d, nil
}

// Check returns a *RejectError when addr (already normalized) is outside
// the allowed domains.
func (d *Domains) Check(addr string) error {
	if d == nil || d.engine == nil {
		return nil
	}
	if err := d.engine.AreSANsAllowed([]string{addr}); err != nil {
		return reject(ReasonDomainNotAllowed,
			fmt.Sprintf("%s is outside the allowed e-mail domains (%s)", addr, strings.Join(d.list, ", ")))
	}
	return nil
}
