package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/smimeca/smimeca/api"
	"github.com/smimeca/smimeca/api/apipki"
	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/directory"
	"github.com/smimeca/smimeca/directory/publish"
	"github.com/smimeca/smimeca/internal/httplimit"
	"github.com/smimeca/smimeca/intune"
	"github.com/smimeca/smimeca/ocsp"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/auditlog"
	"github.com/smimeca/smimeca/policy/auditlog/tlog"
	"github.com/smimeca/smimeca/policy/nosqlstore"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
	"github.com/smimeca/smimeca/scep"
)

// app is the server, built from a validated configuration by newApp and
// served by run: the CA on its database and key store, the rules, the
// escrow, and the HTTP, gRPC, ops and LDAP listeners' servers.
type app struct {
	cfg     *serveConfig
	log     *slog.Logger
	closers []func()
	tlog    *tlog.Log // the audit transparency log (nil with --audit-tlog=false)

	st        *caStack
	store     *nosqlstore.Store
	audit     policy.Auditors
	rules     *policy.Services
	esc       escrowSetup
	reg       *prometheus.Registry
	httpSrv   *http.Server
	grpcSrv   *grpc.Server
	monitor   *healthMonitor
	escrowSvc *api.EscrowService
	assetSrv  *http.Server // the DDM asset endpoint (nil: off)
	ldapSrv   *directory.Server
	publisher *publish.Publisher
	intune    *intune.Client // nil: Intune is off
}

// newApp builds the server; on error what was built is closed.
func newApp(ctx context.Context, cfg *serveConfig, logger *slog.Logger) (*app, error) {
	a := &app{cfg: cfg, log: logger}
	for _, build := range []func(context.Context) error{a.buildCA, a.buildPolicy, a.buildEscrow, a.buildIntune, a.buildHTTP, a.buildGRPC, a.buildDirectory} {
		if err := build(ctx); err != nil {
			a.close()
			return nil, err
		}
	}
	return a, nil
}

// close releases what was built, last first.
func (a *app) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}

func (a *app) buildCA(context.Context) error {
	cfg, logger := a.cfg, a.log
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if cfg.publicURLDefaulted {
		logger.Warn("NO --public-url: the server listens beyond loopback but every certificate's CRL distribution point and every SCEP URL in bundles will say " + cfg.publicURL + ", which devices cannot reach; set --public-url to the URL devices use (certificates issued until then keep the wrong one)")
	}
	if cfg.staticChallenge != "" {
		logger.Warn("a static SCEP challenge is configured: any device that knows it can enrol for any allowed address; use it in labs only")
	}
	st, err := openCA(cfg)
	if err != nil {
		return err
	}
	a.st = st
	a.closers = append(a.closers, st.Close)
	logger.Info("CA keys", "kms", keystore.RedactKMS(cfg.kms), "issuing_key", st.keys.Location(keystore.Issuing))
	if next := st.authority.RootCRLNextUpdate(); time.Until(next) < rootCRLWarnBefore {
		logger.Warn("the root CRL expires soon: sign the next with the offline root key (smimeca root crl) and copy it to every node's DATA/ca", "next_update", next.UTC().Format(time.RFC3339))
	}
	if ra, _ := st.authority.RA(); st.authority.RARenewalDue() {
		logger.Warn("the SCEP RA certificate, which the offline root signs, expires soon: make its successor in a root ceremony (smimeca root reissue-ra), copy it to every node's DATA/ca and restart them", "not_after", ra.NotAfter.UTC().Format(time.RFC3339))
	}
	a.store, err = nosqlstore.New(st.database.DB.DB)
	return err
}

func (a *app) buildPolicy(context.Context) error {
	cfg, logger, r := a.cfg, a.log, a.cfg.resolved
	if r.anyDomain {
		logger.Warn("no --allowed-domains set: challenges can be created for any e-mail domain")
	}
	if len(r.identityFields) == 1 && r.identityFields[0] == policy.IdentityAny {
		logger.Warn("--identity-device-fields none: any identity certificate of the MDM CA may be registered to any device id")
	}
	if r.identityCAs == nil {
		logger.Warn("no --device-identity-ca set: devices can be registered without an identity only, so no escrowed key can be released")
	}
	auditFile, err := auditlog.Open(filepath.Join(cfg.dataDir, "audit.log"), logger)
	if err != nil {
		return err
	}
	a.closers = append(a.closers, func() { auditFile.Close() })
	if cfg.auditTlog {
		signer, err := tlog.LoadOrCreateKey(filepath.Join(cfg.dataDir, "ca"), a.st.authority.Name()+" audit log")
		if err != nil {
			return err
		}
		tl, err := tlog.Open(context.Background(), cfg.auditTlogDir, signer, logger)
		if err != nil {
			return err
		}
		a.tlog = tl
		auditFile.Mirror(tl.Append)
		// Closed after the audit file's last line (closers run in reverse).
		a.closers = append([]func(){func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := tl.Close(ctx); err != nil {
				logger.Error("audit transparency log: close", "err", err)
			}
		}}, a.closers...)
	}
	a.audit = policy.Auditors{auditlog.Log{Logger: logger}, auditFile}
	a.rules, err = policy.New(a.st.authority, a.store, policy.Config{
		Domains: r.domains, Validity: cfg.validity, ContentCommitment: cfg.contentCommitment,
		ChallengeTTL: cfg.challengeTTL, StaticChallenge: cfg.staticChallenge, DeviceIdentityCAs: r.identityCAs,
		IdentityFields: r.identityFields, RekeyHold: cfg.rekeyHold, IdentityRevocations: r.identityCRLs,
	}, policy.WithAuditor(a.audit))
	if err != nil {
		return usagef("%v", err)
	}
	return nil
}

func (a *app) buildEscrow(ctx context.Context) error {
	esc, err := setupEscrow(ctx, a.cfg, a.log, a.audit, a.cfg.resolved.domains, a.st.keys)
	if err != nil {
		return err
	}
	a.esc = esc
	a.closers = append(a.closers, esc.stop)
	return nil
}

// buildHTTP builds the public listener's server: SCEP, CRLs, CA
// certificates and OCSP. Metrics, health and pprof are on the ops listener.
func (a *app) buildHTTP(context.Context) error {
	cfg, logger, authority := a.cfg, a.log, a.st.authority
	a.reg = prometheus.NewRegistry()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ra, raKey := authority.RA()
	scepOpts := []scep.Option{scep.WithLogger(logger), scep.WithMetrics(newSCEPMetrics(a.reg))}
	scepHandler, err := scep.New(a.rules.Enrollment, ra, raKey, a.scepChain(), append(scepOpts, a.scepIssuers())...)
	if err != nil {
		return err
	}
	// PKIOperations and OCSP requests are bounded before any work: body
	// read first (size, deadline), then a slot; per-IP concurrency and rate.
	limits := httplimit.Limits{MaxInFlight: cfg.scepMaxInFlight, RatePerIP: cfg.scepRatePerIP, BurstPerIP: cfg.scepBurstPerIP,
		MaxPerIP: cfg.scepMaxPerIP, MaxBodyBytes: scep.MaxMessageBytes, BodyTimeout: cfg.bodyTimeout, TrustedProxies: cfg.trustedPrefixes}
	shed := httplimit.New(scepHandler, func(r *http.Request) bool { return r.URL.Query().Get("operation") == "PKIOperation" }, limits)
	ocspLimits := limits
	ocspLimits.RatePerIP, ocspLimits.BurstPerIP, ocspLimits.MaxBodyBytes = 5*limits.RatePerIP, 5*limits.BurstPerIP, ocsp.MaxRequestBytes
	mux := http.NewServeMux()
	mux.Handle(scep.Path, shed)
	mux.Handle(scep.LegacyPath, shed)
	if a.intune != nil {
		ih, err := a.intuneHandler(a.intune, limits, scep.WithLogger(logger.With("endpoint", scep.IntunePath)))
		if err != nil {
			return err
		}
		mux.Handle(scep.IntunePath, ih)
		mux.Handle(scep.IntunePath+"/pkiclient.exe", ih)
	}
	mux.Handle("GET "+ca.CRLPath, derHandler("application/pkix-crl", authority.CRL, logger))
	mux.Handle("GET "+ca.RootCRLPath, derHandler("application/pkix-crl", authority.RootCRL, logger))
	mux.Handle("GET "+ca.IssuerPath, derHandler("application/pkix-cert", func() ([]byte, error) { return authority.Intermediate().Raw, nil }, logger))
	mux.Handle("GET "+ca.RootPath, derHandler("application/pkix-cert", func() ([]byte, error) { return authority.Root().Raw, nil }, logger))
	responder, err := ocsp.New(authority, cfg.ocspValidity)
	if err != nil {
		return err
	}
	a.httpSrv = &http.Server{
		Addr: cfg.httpAddr, Handler: withOCSP(mux, httplimit.New(responder, nil, ocspLimits)),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return nil
}

// breakGlass decides whether an administrator may take keys in the clear:
// --allow-break-glass when given, else the installation's default (off for
// a CA made by this version; on, with a warning, for an older one).
func (a *app) breakGlass() (bool, error) {
	if a.cfg.allowBreakGlass.set {
		if a.cfg.allowBreakGlass.value {
			a.log.Warn("plain key release (break-glass) is allowed (--allow-break-glass): an administrator credential can take any user's escrowed keys in the clear, audited")
		}
		return a.cfg.allowBreakGlass.value, nil
	}
	on, err := breakGlassDefault(filepath.Join(a.cfg.dataDir, "ca"))
	if err != nil {
		return false, err
	}
	if on {
		a.log.Warn("this CA predates the break-glass setting, so plain key release (bundle --break-glass, profile render --plain) stays allowed: set --allow-break-glass=false to turn it off, or --allow-break-glass to keep it and silence this warning")
	}
	return on, nil
}

// scepChain is what GetCACert returns after the RA certificate.
func (a *app) scepChain() []*x509.Certificate { return a.st.authority.SCEPCACerts() }

// scepIssuers names the issuing CA for renewals: GetCACert may not serve it.
func (a *app) scepIssuers() scep.Option { return scep.WithIssuers(a.st.authority.Intermediate()) }

// buildGRPC builds the API (mutual TLS with smimeca's API PKI, the
// credential registry, the services) and the health monitor.
func (a *app) buildGRPC(ctx context.Context) error {
	cfg, logger, authority := a.cfg, a.log, a.st.authority
	u, _ := url.Parse(cfg.publicURL)
	grpcHost, _, _ := net.SplitHostPort(cfg.grpcAddr)
	hostname, _ := os.Hostname()
	// The two credentials of the first start (admin, profile) are kept
	// under DATA/credentials and registered like any other credential.
	pki, err := apipki.Ensure(filepath.Join(cfg.dataDir, "ca"), a.st.keys, filepath.Join(cfg.dataDir, "credentials"),
		[]string{u.Hostname(), grpcHost, hostname},
		map[string]string{string(api.RoleAdmin): api.RoleURI(api.RoleAdmin), string(api.RoleProfile): api.RoleURI(api.RoleProfile)})
	if err != nil {
		return err
	}
	credStore, err := nosqlstore.NewCredentialStore(a.st.database.DB.DB)
	if err != nil {
		return err
	}
	creds := policy.NewCredentials(credStore, pki, api.Roles(), a.audit)
	for role, crt := range pki.Clients {
		if err := creds.Bootstrap(ctx, role, role, crt); err != nil {
			return err
		}
	}
	scepURL := cfg.publicURL + scep.Path
	services := api.Services{
		Enrollment:  api.NewEnrollmentService(a.rules, scepURL, logger),
		Devices:     api.NewDeviceService(a.rules.Registry, logger),
		Credentials: api.NewCredentialService(creds, pki.CA, logger),
		Health:      health.NewServer(),
	}
	var escrowed policy.KeyStore
	if a.esc.policy != nil {
		a.escrowSvc = api.NewEscrowService(a.esc.policy, logger)
		services.Escrow = a.escrowSvc
		if sync := a.pfxSync(); sync != nil {
			a.escrowSvc.SetIntuneSync(sync)
		}
		escrowed = a.esc.store
		recStore, err := nosqlstore.NewRecoveryStore(a.st.database.DB.DB)
		if err != nil {
			return err
		}
		services.Recovery = api.NewRecoveryService(policy.NewRecoveries(recStore, a.esc.store, a.audit, policy.RecoveryConfig{
			Quorum: cfg.recoveryQuorum, Deadline: cfg.recoveryDeadline, Notify: recoveryNotifier(cfg.recoveryNotifyURL, logger)}), logger)
	}
	profCert, profKey, err := authority.Delegated(profileSigner(authority.Name()), time.Now())
	if err != nil {
		return err
	}
	var bundleOpts []policy.BundlesOption
	if allowed, err := a.breakGlass(); err != nil {
		return err
	} else if allowed {
		bundleOpts = append(bundleOpts, policy.AllowBreakGlass(), policy.RefuseBreakGlassWith(recoveryConfigured(creds)))
	}
	if cfg.assetAddr != "" {
		secret, err := assetSecret(filepath.Join(cfg.dataDir, "ca"))
		if err != nil {
			return err
		}
		if err := pinAssets(a.store, secret, scepURL); err != nil {
			return err
		}
		bundleOpts = append(bundleOpts, policy.WithAssetSecret(secret))
		clear(secret)
	}
	bundles := policy.NewBundles(a.rules, escrowed, authority, scepURL, a.audit, bundleOpts...)
	bundleSvc := api.NewBundleService(bundles,
		&api.ProfileSigner{Cert: profCert, Key: profKey, Chain: []*x509.Certificate{authority.Intermediate()}}, logger)
	services.Bundles = bundleSvc
	delivery := api.DeliveryConfig{OutlookLDAPHost: cfg.outlookLDAPHost}
	if cfg.assetAddr != "" {
		delivery.Assets, delivery.AssetURL = bundles, cfg.assetURL
		if a.assetSrv, err = a.assetServer(bundles, pki.TLSConfig().GetCertificate); err != nil {
			return err
		}
	}
	bundleSvc.SetDelivery(delivery)
	a.grpcSrv = api.NewServer(pki.TLSConfig(), api.NewAuthorizer(api.DefaultAccess, creds), services, logger)
	a.monitor = a.healthMonitor(services.Health)
	return nil
}

// healthMonitor checks each dependency and sets the services' health.
func (a *app) healthMonitor(hs *health.Server) *healthMonitor {
	m := &healthMonitor{grpc: hs, interval: 5 * time.Second, checks: []healthCheck{
		{"database", func(context.Context) error { return a.store.Ping() }},
		{"ca", func(context.Context) error { _, err := a.st.authority.CRL(); return err }},
	}, needs: map[string][]string{
		"": {"database", "ca"}, pb.Enrollment_ServiceDesc.ServiceName: {"database", "ca"},
		pb.Devices_ServiceDesc.ServiceName: {"database"}, pb.Credentials_ServiceDesc.ServiceName: {"database"},
		pb.ProfileBundles_ServiceDesc.ServiceName: {"database", "ca"},
	}}
	if a.esc.ping != nil {
		m.checks = append(m.checks, healthCheck{"vault", a.esc.ping})
		m.needs[pb.EscrowAdmin_ServiceDesc.ServiceName] = []string{"database", "vault"}
		m.needs[pb.ProfileBundles_ServiceDesc.ServiceName] = []string{"database", "ca", "vault"}
	}
	if a.intune != nil {
		m.checks = append(m.checks, healthCheck{"intune", a.intune.Reachable})
		m.informational = map[string]bool{"intune": true}
	}
	return m
}

// buildDirectory builds the publisher to an existing directory and the
// built-in LDAP endpoint, each when configured.
func (a *app) buildDirectory(context.Context) error {
	cfg := a.cfg
	if pc := cfg.resolved.publisher; pc != nil {
		pub, err := publish.New(*pc, a.esc.store, a.log)
		if err != nil {
			return usagef("%v (--ldap-publish-*)", err)
		}
		a.publisher = pub
		a.esc.policy.OnChange(pub.Notify)
		a.escrowSvc.SetDirectorySync(func(ctx context.Context) (*pb.SyncDirectoryResponse, error) {
			r, err := pub.SyncAll(ctx)
			return &pb.SyncDirectoryResponse{Users: int32(r.Users), Added: int32(r.Added), Removed: int32(r.Removed), Missing: int32(r.Missing), Failed: int32(r.Failed)}, err
		})
	}
	if cfg.ldapAddr != "" {
		srv, err := directory.NewServer(a.esc.directory, directory.ServerConfig{BaseDN: cfg.ldapBaseDN}, a.log)
		if err != nil {
			return usagef("--ldap-base-dn: %v", err)
		}
		a.ldapSrv = srv
	}
	return nil
}

// run listens, serves until ctx is done or a listener fails, and shuts
// down gracefully.
func (a *app) run(ctx context.Context) error {
	cfg, logger := a.cfg, a.log
	a.monitor.check(ctx)
	go a.monitor.run(ctx)
	httpLn, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.httpAddr, err)
	}
	grpcLn, err := api.Listen(cfg.grpcAddr)
	if err != nil {
		httpLn.Close()
		return fmt.Errorf("listen %s: %w", cfg.grpcAddr, err)
	}
	opsSrv, opsLn, err := a.ops()
	if err != nil {
		httpLn.Close()
		grpcLn.Close()
		return err
	}
	errc := make(chan error, 4)
	if a.assetSrv != nil {
		ln, err := net.Listen("tcp", cfg.assetAddr)
		if err != nil {
			httpLn.Close()
			grpcLn.Close()
			if opsLn != nil {
				opsLn.Close()
			}
			return fmt.Errorf("listen %s: %w", cfg.assetAddr, err)
		}
		go func() { errc <- a.assetSrv.ServeTLS(ln, "", "") }()
		logger.Info("DDM asset endpoint (mutual TLS)", "addr", ln.Addr().String(), "url", cfg.assetURL+api.AssetPath)
	}
	go func() { errc <- a.httpSrv.Serve(httpLn) }()
	go func() { errc <- a.grpcSrv.Serve(grpcLn) }()
	go purgeChallenges(ctx, a.store, logger)
	a.startDirectory(ctx, errc)
	a.startIntuneFeed(ctx)
	a.startPFXSync(ctx, a.pfxSync())
	if opsLn != nil {
		go func() {
			if err := opsSrv.Serve(opsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Warn("ops listener", "err", err)
			}
		}()
		defer opsSrv.Close()
	}
	authority := a.st.authority
	fp := authority.Fingerprint()
	logger.Info("smimeca serving",
		"http", httpLn.Addr().String(), "grpc", grpcLn.Addr().String(),
		"scep_url", cfg.publicURL+scep.Path, "crl_url", authority.CRLURL(),
		"root_sha256", fmt.Sprintf("%X", fp[:]), "data", cfg.dataDir,
		"ops", cfg.opsAddr, "admin_credentials", filepath.Join(cfg.dataDir, "credentials", string(api.RoleAdmin)))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	a.shutdown()
	logger.Info("smimeca stopped")
	if errors.Is(serveErr, http.ErrServerClosed) {
		return nil
	}
	return serveErr
}

// ops returns the ops listener's server (health of each dependency,
// metrics, pprof on request) and its listener (nil when --ops-addr is
// empty).
func (a *app) ops() (*http.Server, net.Listener, error) {
	ops := http.NewServeMux()
	ops.Handle("GET /healthz", a.monitor)
	ops.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	if a.tlog != nil {
		// The audit transparency log, read-only, for auditors and
		// witnesses (smimeca audit verify --log http://…/audit-log/).
		ops.Handle("GET /audit-log/", http.StripPrefix("/audit-log", tlogFiles(a.cfg.auditTlogDir)))
	}
	if a.cfg.opsPprof {
		ops.Handle("/debug/pprof/", pprofMux())
	}
	srv := &http.Server{Handler: ops, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	if a.cfg.opsAddr == "" {
		return srv, nil, nil
	}
	ln, err := net.Listen("tcp", a.cfg.opsAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen %s (--ops-addr): %w", a.cfg.opsAddr, err)
	}
	return srv, ln, nil
}

// startDirectory starts the publisher (with its start-up reconciliation)
// and the LDAP endpoint with its index of escrowed users.
func (a *app) startDirectory(ctx context.Context, errc chan<- error) {
	logger := a.log
	if pub := a.publisher; pub != nil {
		go pub.Run(ctx)
		if a.cfg.publishSyncStart {
			go func() {
				// Reconcile what changed while smimeca was down.
				if r, err := pub.SyncAll(ctx); err != nil {
					logger.Warn("directory: start-up sync failed; changes are published as they happen, run `smimeca directory sync` later", "err", err)
				} else {
					logger.Info("directory: start-up sync", "users", r.Users, "added", r.Added, "removed", r.Removed, "missing", r.Missing, "failed", r.Failed)
				}
			}()
		}
	}
	if a.ldapSrv != nil {
		go keepDirectoryIndex(ctx, a.esc.directory, a.esc.store, logger)
		go func() { errc <- a.ldapSrv.Serve(a.cfg.ldapAddr) }()
		a.closers = append(a.closers, func() { a.ldapSrv.Stop() })
		logger.Info("recipient directory (LDAP)", "addr", a.cfg.ldapAddr, "base_dn", a.cfg.ldapBaseDN)
	}
}

// shutdown stops the HTTP and gRPC servers, letting calls in progress end
// for up to 10 s.
func (a *app) shutdown() {
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a.httpSrv.Shutdown(shutdownCtx)
	if a.assetSrv != nil {
		a.assetSrv.Shutdown(shutdownCtx)
	}
	stopped := make(chan struct{})
	go func() { a.grpcSrv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-shutdownCtx.Done():
		a.grpcSrv.Stop()
	}
}
