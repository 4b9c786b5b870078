package main

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
	"go.step.sm/crypto/pemutil"

	"github.com/smimeca/smimeca/directory/publish"
	"github.com/smimeca/smimeca/intune"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/scep"
)

// resolved is what validate derives from serve's flags: every file they
// name read and every value parsed, so that a bad flag stops the start
// before anything touches the data directory, a token or the network.
type resolved struct {
	domains        *policy.Domains
	anyDomain      bool
	identityCAs    *x509.CertPool
	identityCRLs   policy.IdentityRevocations
	identityFields []policy.IdentityField
	aliases        map[string]string
	publisher      *publish.Config // nil: no publishing
	intune         *intune.Config  // nil: Intune is off
}

// validate checks every flag of serve (and init) whose check needs more
// than its syntax, reading the files they name, and fills c.resolved.
func (c *serveConfig) validate() error {
	if err := scep.SetPKCS7Defaults(c.scepEncryption); err != nil {
		return usagef("--scep-encryption: %v", err)
	}
	if c.auditTlogDir == "" {
		c.auditTlogDir = filepath.Join(c.dataDir, "audit-log")
	}
	if c.recoveryQuorum < 1 || c.recoveryQuorum > 9 {
		return usagef("--recovery-quorum %d: between 1 and 9 approvals", c.recoveryQuorum)
	}
	// A short deadline only refuses more; 30 days bounds a forgotten one.
	if c.recoveryDeadline < time.Second || c.recoveryDeadline > 30*24*time.Hour {
		return usagef("--recovery-deadline %s: between 1s and 30d", c.recoveryDeadline)
	}
	if u := c.recoveryNotifyURL; u != "" && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
		return usagef("--recovery-notify-url %q: an http:// or https:// URL", u)
	}
	var domainList []string
	for _, d := range strings.Split(c.allowedDomains, ",") {
		if d = strings.TrimSpace(d); d != "" {
			domainList = append(domainList, d)
		}
	}
	var err error
	r := &c.resolved
	if r.domains, err = policy.NewDomains(domainList); err != nil {
		return usagef("--allowed-domains: %v", err)
	}
	r.anyDomain = len(domainList) == 0
	if r.identityCAs, err = loadCertPool(c.deviceIdentityCA); err != nil {
		return usagef("--device-identity-ca: %v", err)
	}
	if c.identityCRL != "" {
		crls, err := newIdentityCRLs(c.identityCRL, c.deviceIdentityCA)
		if err != nil {
			return usagef("--device-identity-crl: %v", err)
		}
		r.identityCRLs = crls
	}
	if r.identityFields, err = policy.ParseIdentityFields(c.identityFields); err != nil {
		return usagef("--identity-device-fields: %v", err)
	}
	escrowOn := c.vaultAddr != "" || c.embeddedVault
	switch {
	case c.embeddedVault && c.vaultAddr != "":
		return usagef("--embedded-vault and --vault-addr exclude each other")
	case c.ldapAddr != "" && !escrowOn:
		return usagef("--ldap-addr publishes escrowed certificates: it needs the escrow (--vault-addr or --embedded-vault)")
	case c.publishURL != "" && !escrowOn:
		return usagef("--ldap-publish-url publishes escrowed certificates: it needs the escrow (--vault-addr or --embedded-vault)")
	}
	if r.aliases, err = readAliases(c.emailAliases); err != nil {
		return usagef("--email-aliases: %v", err)
	}
	if c.ldapAddr != "" {
		if _, err := ldap.ParseDN(c.ldapBaseDN); err != nil {
			return usagef("--ldap-base-dn: %q: %v", c.ldapBaseDN, err)
		}
	}
	if c.publishURL != "" {
		if r.publisher, err = c.publisherConfig(); err != nil {
			return err
		}
	}
	if r.intune, err = c.intune.config(); err != nil {
		return err
	}
	return nil
}

// publisherConfig reads the --ldap-publish-* flags and the files they name.
func (c *serveConfig) publisherConfig() (*publish.Config, error) {
	pc := &publish.Config{URL: c.publishURL, BindDN: c.publishBindDN, BaseDN: c.publishBaseDN,
		Filter: c.publishFilter, Attribute: c.publishAttribute, RetryMax: c.publishRetryMax}
	if c.publishPWFile != "" {
		pw, err := readPassword(c.publishPWFile, "")
		if err != nil {
			return nil, usagef("--ldap-publish-password-file: %v", err)
		}
		pc.Password = pw
	}
	if c.publishIssuers != "" {
		b, err := os.ReadFile(c.publishIssuers)
		if err != nil {
			return nil, usagef("--ldap-publish-issuers: %v", err)
		}
		if pc.Issuers, err = pemutil.ParseCertificateBundle(b); err != nil {
			return nil, usagef("--ldap-publish-issuers %s: %v", c.publishIssuers, err)
		}
	}
	if err := pc.Validate(); err != nil {
		return nil, usagef("%v (--ldap-publish-*)", err)
	}
	return pc, nil
}
