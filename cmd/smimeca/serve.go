package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/smimeca/smimeca/api"
	"github.com/smimeca/smimeca/api/apipki"
	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/directory"
	"github.com/smimeca/smimeca/directory/publish"
	"github.com/smimeca/smimeca/internal/httplimit"
	"github.com/smimeca/smimeca/internal/vaultproc"
	"github.com/smimeca/smimeca/ocsp"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
	"github.com/smimeca/smimeca/scep"
)

// Compile-time checks that the concrete types fit the consumers' interfaces.
var (
	_ policy.Issuer        = (*ca.Authority)(nil)
	_ scep.Enroller        = (*policy.Enrollment)(nil)
	_ api.EnrollmentPolicy = (*policy.Services)(nil)
	_ api.DevicePolicy     = (*policy.Registry)(nil)
	_ api.CredentialPolicy = (*policy.Credentials)(nil)
	_ policy.ClientSigner  = (*apipki.PKI)(nil)
	_ policy.Store         = (*nosqlstore.Store)(nil)
)

// loadCertPool reads a PEM file of CA certificates (nil pool for "").
func loadCertPool(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM CERTIFICATE", path)
	}
	return pool, nil
}

type serveConfig struct {
	dataDir           string
	kms               string
	db                string
	httpAddr          string
	grpcAddr          string
	publicURL         string
	certBaseURL       string
	policyOIDs        string
	ocspValidity      time.Duration
	allowedDomains    string
	issuerKeyType     string
	validity          time.Duration
	challengeTTL      time.Duration
	contentCommitment bool
	staticChallenge   string
	scepIncludeRoot   bool
	scepEncryption    string
	allowBreakGlass   optBool
	opsAddr           string
	ldapAddr          string
	ldapBaseDN        string
	publishURL        string
	publishBindDN     string
	publishPWFile     string
	publishBaseDN     string
	publishFilter     string
	publishAttribute  string
	publishIssuers    string
	publishRetryMax   time.Duration
	publishSyncStart  bool
	opsPprof          bool
	vaultAddr         string
	vaultTokenFile    string
	vaultRoleID       string
	vaultSecretIDFile string
	vaultKVMount      string
	vaultTransit      string
	vaultTransitKey   string
	vaultSetup        bool
	embeddedVault     bool
	vaultBin          string
	embeddedVaultAddr string
	emailAliases      string
	deviceIdentityCA  string
	identityFields    string
	identityCRL       string
	rekeyHold         time.Duration
	recoveryQuorum    int
	recoveryDeadline  time.Duration
	recoveryNotifyURL string
	auditTlog         bool
	auditTlogDir      string
	assetAddr         string
	assetURL          string
	assetTLSCert      string
	assetTLSKey       string
	outlookLDAPHost   string
	// publicURLDefaulted reports that --public-url was derived from an
	// address other peers reach: certificates would then point at it.
	publicURLDefaulted bool
	scepMaxInFlight    int
	scepRatePerIP      float64
	scepBurstPerIP     int
	scepMaxPerIP       int
	bodyTimeout        time.Duration
	trustedProxies     string
	trustedPrefixes    []netip.Prefix
	intune             intuneFlags
	// resolved is what validate read and parsed from the flags above.
	resolved  resolved
	logFormat string
	logLevel  string
}

func parseServe(args []string) (*serveConfig, error) { return parseServeAs("serve", args) }

// parseServeAs reads serve's flags for command name (serve, or init, which
// takes the same).
func parseServeAs(name string, args []string) (*serveConfig, error) {
	c := &serveConfig{}
	f := newFlags(name)
	f.str(&c.dataDir, "data", "SMIMECA_DATA", "data", "data directory (CA certificates, key files with softkms, database, credentials)")
	f.str(&c.db, "db", "SMIMECA_DB", "", "the CA's database: empty for the embedded bbolt file under DATA/db (one node), or a postgres:// URL shared by several nodes")
	f.str(&c.kms, "kms", "SMIMECA_KMS", keystore.KMSSoft, "where the CA's private keys are made and kept: softkms (0600 files under DATA/ca) or a PKCS#11 token's URI, e.g. 'pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=smimeca?pin-source=/etc/smimeca/pin' (PIN also from $"+kmsPINEnv+")")
	f.str(&c.httpAddr, "http-addr", "SMIMECA_HTTP_ADDR", ":8080", "public HTTP listen address (SCEP, CRL)")
	f.str(&c.grpcAddr, "grpc-addr", "SMIMECA_GRPC_ADDR", ":9443", "gRPC (mTLS) listen address")
	f.str(&c.publicURL, "public-url", "SMIMECA_PUBLIC_URL", "", "public base URL put into certificates and bundles (default http://<http addr>)")
	f.str(&c.certBaseURL, "cert-base-url", "SMIMECA_CERT_BASE_URL", "", "plain http:// base URL put into certificates for the CRL, OCSP responder and CA certificates (default: --public-url, which must then be http://)")
	f.str(&c.policyOIDs, "policy-oids", "SMIMECA_POLICY_OIDS", "", "comma-separated private certificate policy OIDs added to every certificate beside the S/MIME BR mailbox-validated strict policy 2.23.140.1.5.1.3")
	f.duration(&c.ocspValidity, "ocsp-validity", "SMIMECA_OCSP_VALIDITY", ocsp.DefaultValidity, "validity of OCSP responses (8h to 240h)")
	f.str(&c.allowedDomains, "allowed-domains", "SMIMECA_ALLOWED_DOMAINS", "", "comma-separated e-mail domains that may get certificates (default: any)")
	f.str(&c.issuerKeyType, "issuer-key-type", "SMIMECA_ISSUER_KEY_TYPE", ca.KeyTypeEC, "issuing CA key type on first start: EC (P-256; the RSA root signs the SCEP RA and GetCACert serves RA and root) or RSA (3072; it signs the RA, GetCACert serves RA, issuing CA and root; one RSA signature more per certificate)")
	f.duration(&c.validity, "cert-validity", "SMIMECA_CERT_VALIDITY", policy.DefaultValidity, "validity of issued signing certificates")
	f.duration(&c.challengeTTL, "challenge-ttl", "SMIMECA_CHALLENGE_TTL", policy.DefaultChallengeTTL, "default lifetime of one-time challenges")
	f.boolean(&c.contentCommitment, "content-commitment", "SMIMECA_CONTENT_COMMITMENT", false, "add the contentCommitment key usage to signing certificates")
	f.str(&c.staticChallenge, "static-challenge", "SMIMECA_STATIC_CHALLENGE", "", "LAB ONLY: a shared challenge that lets devices name their own address")
	f.optionalBool(&c.allowBreakGlass, "allow-break-glass", "SMIMECA_ALLOW_BREAK_GLASS", "allow an administrator's plain key release (bundle --break-glass, profile render --plain; audited). Unset: off for a CA made by this version, on (with a warning at each start) for one made before it became a setting")
	f.boolean(&c.scepIncludeRoot, "scep-include-root", "SMIMECA_SCEP_INCLUDE_ROOT", true, "include the root in GetCACert when the issuing CA signs the RA (RSA issuing CA; clients such as certmonger verify CertRep up to it); where the root signs the RA it is always there")
	f.str(&c.scepEncryption, "scep-encryption", "SMIMECA_SCEP_ENCRYPTION", "aes256-cbc", "CertRep content encryption: aes256-cbc, aes128-cbc, aes256-gcm")
	f.str(&c.vaultAddr, "vault-addr", "SMIMECA_VAULT_ADDR", "", "Vault address for the escrow (empty: no escrow, unless --embedded-vault); for a cluster every node's, comma-separated: requests move to the next node when one does not answer")
	f.str(&c.vaultTokenFile, "vault-token-file", "SMIMECA_VAULT_TOKEN_FILE", "", "file holding the Vault token ($SMIMECA_VAULT_TOKEN also works)")
	f.str(&c.vaultRoleID, "vault-role-id", "SMIMECA_VAULT_ROLE_ID", "", "AppRole role id (with --vault-secret-id-file)")
	f.str(&c.vaultSecretIDFile, "vault-secret-id-file", "SMIMECA_VAULT_SECRET_ID_FILE", "", "file holding the AppRole secret id")
	f.str(&c.vaultKVMount, "vault-kv-mount", "SMIMECA_VAULT_KV_MOUNT", "smimeca", "KV v2 mount of the escrow")
	f.str(&c.vaultTransit, "vault-transit-mount", "SMIMECA_VAULT_TRANSIT_MOUNT", "transit", "Transit mount")
	f.str(&c.vaultTransitKey, "vault-transit-key", "SMIMECA_VAULT_TRANSIT_KEY", "smimeca-escrow", "Transit key that encrypts escrowed private keys")
	f.boolean(&c.vaultSetup, "vault-setup", "SMIMECA_VAULT_SETUP", false, "create the KV mount, Transit mount and key when missing (needs a token that may)")
	f.boolean(&c.embeddedVault, "embedded-vault", "SMIMECA_EMBEDDED_VAULT", false, "SINGLE MACHINE ONLY: run a Vault with file storage under DATA/vault, unseal key kept in DATA/vault/init.json")
	f.str(&c.embeddedVaultAddr, "embedded-vault-addr", "SMIMECA_EMBEDDED_VAULT_ADDR", "127.0.0.1:8200", "listen address of the embedded Vault (loopback)")
	f.str(&c.vaultBin, "vault-bin", "SMIMECA_VAULT_BIN", vaultproc.DefaultBinary(), "Vault binary for --embedded-vault (scripts/vault.sh builds it)")
	f.str(&c.deviceIdentityCA, "device-identity-ca", "SMIMECA_DEVICE_IDENTITY_CA", "", "PEM file of the CA(s) that issue devices' MDM identity certificates; needed to register a device with an identity (and so to release any key to it)")
	f.str(&c.identityCRL, "device-identity-crl", "SMIMECA_DEVICE_IDENTITY_CRL", "", "CRL file(s) of the MDM's device identity CA (PEM or DER, comma-separated; re-read when changed): a revoked identity is neither registered nor released to, and an expired CRL releases nothing")
	f.str(&c.identityFields, "identity-device-fields", "SMIMECA_IDENTITY_DEVICE_FIELDS", "cn,san", "where a device identity certificate must name its device id: cn (subject CN), san (a DNS name, URI or e-mail SAN), both (cn,san), or none (no check)")
	f.integer(&c.recoveryQuorum, "recovery-quorum", "SMIMECA_RECOVERY_QUORUM", 2, "key recovery: approvals (distinct recovery-approver credentials, never the officer) a request needs, 1 to 9")
	f.duration(&c.recoveryDeadline, "recovery-deadline", "SMIMECA_RECOVERY_DEADLINE", 72*time.Hour, "key recovery: how long a request waits for its quorum and its one download")
	f.str(&c.recoveryNotifyURL, "recovery-notify-url", "SMIMECA_RECOVERY_NOTIFY_URL", "", "key recovery: an http(s) URL that gets each step as JSON (user, officer, approvers, state; no secret) to tell the user, S/MIME BR 4.12.1 (optional)")
	f.boolean(&c.auditTlog, "audit-tlog", "SMIMECA_AUDIT_TLOG", true, "also append every audit event to a transparency log (signed checkpoints; smimeca audit verify)")
	f.str(&c.auditTlogDir, "audit-tlog-dir", "SMIMECA_AUDIT_TLOG_DIR", "", "the transparency log's directory (default DATA/audit-log; several nodes may share one on a POSIX file system with locks, e.g. CephFS)")
	f.str(&c.assetAddr, "asset-addr", "SMIMECA_ASSET_ADDR", "", "HTTPS listen address of the DDM asset endpoint, where Apple devices fetch their SCEP credential and escrowed identities themselves over mutual TLS with their registered identity (empty: off, and profile render --format ddm is refused)")
	f.str(&c.assetURL, "asset-url", "SMIMECA_ASSET_URL", "", "public https:// base URL of the asset endpoint put into DDM declarations (default https://<public URL host>:<asset port>)")
	f.str(&c.assetTLSCert, "asset-tls-cert", "SMIMECA_ASSET_TLS_CERT", "", "PEM certificate chain of the asset endpoint, one devices trust (default: the gRPC API's server certificate, from smimeca's API CA — devices must then trust DATA/ca/api_ca.crt)")
	f.str(&c.assetTLSKey, "asset-tls-key", "SMIMECA_ASSET_TLS_KEY", "", "PEM private key of --asset-tls-cert")
	f.str(&c.outlookLDAPHost, "outlook-ldap-host", "SMIMECA_OUTLOOK_LDAP_HOST", "", "host (and port) of the recipient directory that Outlook's app configuration names (profile render --format outlook-*)")
	f.duration(&c.rekeyHold, "rekey-hold", "SMIMECA_REKEY_HOLD", policy.DefaultRekeyHold, "after a device rekey, how long key releases to it wait unless an administrator confirms (smimeca device confirm)")
	f.integer(&c.scepMaxInFlight, "scep-max-inflight", "SMIMECA_SCEP_MAX_INFLIGHT", 16*runtime.GOMAXPROCS(0), "PKIOperations processed at once; more get 503 with Retry-After")
	f.float(&c.scepRatePerIP, "scep-rate-per-ip", "SMIMECA_SCEP_RATE_PER_IP", httplimit.DefaultRatePerIP, "PKIOperations per second per client IP (0: no limit); more get 429 with Retry-After (OCSP: 5 times it)")
	f.integer(&c.scepBurstPerIP, "scep-burst-per-ip", "SMIMECA_SCEP_BURST_PER_IP", httplimit.DefaultBurstPerIP, "burst of --scep-rate-per-ip")
	f.integer(&c.scepMaxPerIP, "scep-max-per-ip", "SMIMECA_SCEP_MAX_PER_IP", httplimit.DefaultMaxPerIP, "PKIOperations (and OCSP requests) of one client IP in progress at once, body reading included (0: no limit); more get 429")
	f.duration(&c.bodyTimeout, "body-timeout", "SMIMECA_BODY_TIMEOUT", httplimit.DefaultBodyTimeout, "how long a PKIOperation or OCSP request body may take to arrive (it is read before a slot is taken); slower gets 408")
	f.str(&c.trustedProxies, "trusted-proxies", "SMIMECA_TRUSTED_PROXIES", "", "load balancers (addresses or CIDRs, comma-separated) whose X-Forwarded-For names the client for the per-IP limits; from any other peer the header is ignored")
	f.str(&c.emailAliases, "email-aliases", "SMIMECA_EMAIL_ALIASES", "", "CSV file of alias,user address pairs accepted at PFX import")
	f.str(&c.ldapAddr, "ldap-addr", "SMIMECA_LDAP_ADDR", "", "built-in read-only LDAP endpoint of users' recipient (encryption) certificates, anonymous bind only (empty: off)")
	f.str(&c.ldapBaseDN, "ldap-base-dn", "SMIMECA_LDAP_BASE_DN", directory.DefaultBaseDN, "base DN of the built-in LDAP endpoint's entries")
	f.str(&c.publishURL, "ldap-publish-url", "SMIMECA_LDAP_PUBLISH_URL", "", "publish users' recipient certificates to this directory (ldap:// or ldaps://; empty: off)")
	f.str(&c.publishBindDN, "ldap-publish-bind-dn", "SMIMECA_LDAP_PUBLISH_BIND_DN", "", "DN to bind as for publishing")
	f.str(&c.publishPWFile, "ldap-publish-password-file", "SMIMECA_LDAP_PUBLISH_PASSWORD_FILE", "", "file holding that DN's password")
	f.str(&c.publishBaseDN, "ldap-publish-base-dn", "SMIMECA_LDAP_PUBLISH_BASE_DN", "", "base DN under which users' entries are found")
	f.str(&c.publishFilter, "ldap-publish-filter", "SMIMECA_LDAP_PUBLISH_FILTER", publish.DefaultFilter, "filter that finds a user's entry; %s is the address")
	f.str(&c.publishAttribute, "ldap-publish-attribute", "SMIMECA_LDAP_PUBLISH_ATTRIBUTE", publish.DefaultAttribute, "attribute that holds the certificates (Active Directory: userCertificate)")
	f.str(&c.publishIssuers, "ldap-publish-issuers", "SMIMECA_LDAP_PUBLISH_ISSUERS", "", "PEM file of CAs whose certificates in that attribute smimeca manages besides the issuers of escrowed certificates")
	f.boolean(&c.publishSyncStart, "ldap-publish-sync-on-start", "SMIMECA_LDAP_PUBLISH_SYNC_ON_START", true, "reconcile every user with the directory at start-up (one escrow read and one LDAP search per user; changes queued when smimeca stopped are otherwise lost until `smimeca directory sync`)")
	f.duration(&c.publishRetryMax, "ldap-publish-retry-max", "SMIMECA_LDAP_PUBLISH_RETRY_MAX", publish.DefaultRetryMax, "longest wait between retries when the directory is down")
	f.str(&c.opsAddr, "ops-addr", "SMIMECA_OPS_ADDR", "127.0.0.1:9090", "ops listener: /healthz (each dependency), /metrics, and pprof with --ops-pprof; keep it off the public network")
	f.boolean(&c.opsPprof, "ops-pprof", "SMIMECA_OPS_PPROF", false, "serve net/http/pprof under /debug/pprof/ on the ops listener")
	c.intune.register(f)
	f.str(&c.logFormat, "log-format", "SMIMECA_LOG_FORMAT", "text", "log format: text or json")
	f.str(&c.logLevel, "log-level", "SMIMECA_LOG_LEVEL", "info", "log level: debug, info, warn, error")
	if err := f.parse(args); err != nil {
		return nil, err
	}
	if err := c.checkFlags(); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// checkFlags checks the flags' values and derives the public URLs.
func (c *serveConfig) checkFlags() error {
	if c.publicURL == "" {
		hp, err := localURLHost(c.httpAddr)
		if err != nil {
			return usagef("--http-addr: %v", err)
		}
		c.publicURL = "http://" + hp
		c.publicURLDefaulted = !loopbackOnly(c.httpAddr)
	}
	u, err := url.Parse(c.publicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef("--public-url %q must be an absolute http(s) URL", c.publicURL)
	}
	c.publicURL = strings.TrimRight(c.publicURL, "/")
	if c.certBaseURL == "" {
		if u.Scheme != "http" {
			return usagef("--public-url %q is https: set --cert-base-url to the plain http:// URL of this server's /crl and /ocsp (RFC 5280 and the S/MIME BR want http for them)", c.publicURL)
		}
		c.certBaseURL = c.publicURL
	}
	if cu, err := url.Parse(c.certBaseURL); err != nil || cu.Scheme != "http" || cu.Host == "" {
		return usagef("--cert-base-url %q must be an absolute http:// URL", c.certBaseURL)
	}
	c.certBaseURL = strings.TrimRight(c.certBaseURL, "/")
	if c.ocspValidity < ocsp.MinValidity || c.ocspValidity > ocsp.MaxValidity {
		return usagef("--ocsp-validity %s must be between %s and %s", c.ocspValidity, ocsp.MinValidity, ocsp.MaxValidity)
	}
	if c.validity > policy.MaxValidity {
		return usagef("--cert-validity %s is longer than the S/MIME BR's 825 days (%s)", c.validity, policy.MaxValidity)
	}
	if _, _, err := net.SplitHostPort(c.grpcAddr); err != nil {
		return usagef("--grpc-addr %q: %v", c.grpcAddr, err)
	}
	if c.scepMaxInFlight < 1 || c.scepRatePerIP < 0 || c.scepBurstPerIP < 1 || c.scepMaxPerIP < 0 || c.bodyTimeout < 100*time.Millisecond {
		return usagef("--scep-max-inflight and --scep-burst-per-ip must be at least 1, --scep-rate-per-ip and --scep-max-per-ip at least 0, --body-timeout at least 100ms")
	}
	if c.trustedPrefixes, err = httplimit.ParsePrefixes(c.trustedProxies); err != nil {
		return usagef("--trusted-proxies: %v", err)
	}
	return c.checkAssetFlags(u)
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usagef("--log-format %q: use text or json", format)
	}
}

func serve(args []string, stderr io.Writer) error {
	cfg, err := parseServe(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logger, err := newLogger(stderr, cfg.logFormat, cfg.logLevel)
	if err != nil {
		return err
	}
	// Every enrolment ends in a database commit whose fdatasync blocks its
	// thread for a millisecond or more, and Go hands that thread's P to
	// other goroutines only when sysmon notices, which under steady load
	// can take as long as the sync itself: with GOMAXPROCS = cores, one
	// core sat idle for ~40 % of the time at 16 concurrent enrolments on 2
	// cores (runtime trace). One P more than the default keeps the cores
	// busy (+11–14 % enrolments/s, BENCHMARKS.md). GOMAXPROCS in the
	// environment still wins.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runServer(ctx, cfg, logger)
}

// runServer builds the server from the validated cfg and serves until ctx
// is done.
func runServer(ctx context.Context, cfg *serveConfig, logger *slog.Logger) error {
	a, err := newApp(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer a.close()
	return a.run(ctx)
}

// derHandler serves what get returns with the content type.
func derHandler(contentType string, get func() ([]byte, error), logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		der, err := get()
		if err != nil {
			logger.Error("publish", "path", r.URL.Path, "err", err)
			http.Error(w, "unavailable, try again later", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", contentType)
		w.Write(der)
	})
}

// withOCSP sends /ocsp and /ocsp/... to the OCSP responder before the
// mux, which would clean (and redirect) a GET request's base64 path when
// it holds "//".
func withOCSP(mux http.Handler, responder http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; p == ca.OCSPPath || strings.HasPrefix(p, ca.OCSPPath+"/") {
			responder.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func purgeChallenges(ctx context.Context, store *nosqlstore.Store, logger *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := store.PurgeChallenges(time.Now().Add(-24 * time.Hour))
			if err != nil {
				logger.Warn("purge challenges", "err", err)
			} else if n > 0 {
				logger.Info("purged old challenges", "count", n)
			}
		}
	}
}

// directoryIndexRefresh is how often the directory's index of escrowed
// users is reloaded, to pick up imports made on other nodes (this node's
// own changes enter it at once).
const directoryIndexRefresh = 5 * time.Minute

// keepDirectoryIndex loads the directory's index of users with escrow (so
// that an anonymous search of anyone else costs no Vault read), retrying
// while Vault is down, and reloads it every directoryIndexRefresh.
func keepDirectoryIndex(ctx context.Context, dir *policy.Directory, users policy.UserLister, logger *slog.Logger) {
	wait := time.Second
	for {
		n, err := dir.LoadIndex(ctx, users)
		if err != nil {
			logger.Warn("recipient directory: the index of escrowed users could not be loaded; lookups read the escrow meanwhile", "err", err)
			wait = min(2*wait, time.Minute)
		} else {
			logger.Debug("recipient directory: index loaded", "users", n)
			wait = directoryIndexRefresh
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// rootCRLWarnBefore is how long before the root CRL's nextUpdate serve
// warns that a root ceremony is due.
const rootCRLWarnBefore = 60 * 24 * time.Hour
