// Command kms-emulator serves the Huawei Cloud KMS ListKmsByTags emulator of package
// pkg/kmstest, and the IAM emulator of pkg/kmstest/iamtest, over HTTP(S), for demos and local
// development. All behaviour lives in those packages; this is only flags, listeners and signals.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/iamtest"
)

const usageHeader = `kms-emulator serves Huawei Cloud KMS ListKmsByTags
(POST /v1.0/{project_id}/kms/resource_instances/action) from an in-memory key store.

Credentials: requests need X-Auth-Token with a --token value, or an SDK-HMAC-SHA256 signature
made with --access-key/--secret-key (plus X-Security-Token when --security-token is set), unless
--no-auth. Secrets may come from the environment instead of the command line:
KMS_EMULATOR_TOKEN, KMS_EMULATOR_ACCESS_KEY, KMS_EMULATOR_SECRET_KEY, KMS_EMULATOR_SECURITY_TOKEN.

Keyless credentials: unless --iam=false, the --listen port also serves an emulated IAM, ECS
metadata service and CCE pod identity endpoint whose temporary credentials this KMS accepts
for --project-id, each living --credential-lifetime:
  POST /v3.0/OS-AUTH/id-token/tokens       OIDC id_token (header X-Idp-Id) -> IAM token
  POST /v3.0/OS-CREDENTIAL/securitytokens  IAM token -> temporary AK/SK
  PUT  /meta-data/latest/api/token         metadata token (X-Metadata-Token-Ttl-Seconds)
  GET  /openstack/latest/securitykey       node agency AK/SK (X-Metadata-Token; --node-agency)
  POST /v1/pod-identity/credentials        pod identity AK/SK (Authorization: --pod-identity-token,
                                           or env KMS_EMULATOR_POD_IDENTITY_TOKEN)
Identity providers (with their JWKS) and conversion rules are set with the admin API.

Admin API: UNAUTHENTICATED, for local use only. Served under /admin/ on the --listen port, or on
its own port with --admin-listen ADDR, or not at all with --admin-listen off. Routes:
  GET|POST|PUT|DELETE /admin/keys    GET|PATCH|DELETE /admin/keys/{id}
  GET|POST|DELETE /admin/faults      GET /admin/stats   POST /admin/reset-stats
  GET /admin/requests                GET|PUT /admin/shape   POST /admin/tokens
  GET|PUT /admin/iam/identity-providers    DELETE /admin/iam/identity-providers/{id}
  GET|PUT|DELETE /admin/iam/rules          GET|PUT /admin/iam/node-agency
  PUT /admin/iam/pod-identity              GET|PUT /admin/iam/lifetime
  GET|POST|DELETE /admin/iam/faults        GET /admin/iam/stats   POST /admin/iam/reset-stats
See the package documentation of pkg/kmstest for bodies and fault kinds, and of
pkg/kmstest/iamtest for the IAM routes and error codes.

Flags:
`

type config struct {
	listen        string
	adminListen   string
	projectID     string
	keysFile      string
	shape         string
	tokens        []string
	accessKey     string
	secretKey     string
	securityToken string
	noAuth        bool
	tlsCert       string
	tlsKey        string
	quiet         bool
	// Keyless credentials.
	iam                bool
	credentialLifetime time.Duration
	podIdentityToken   string
	nodeAgency         bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kms-emulator:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	c := config{}
	fs := flag.NewFlagSet("kms-emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHeader)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8443", "address to serve the KMS API on")
	fs.StringVar(&c.adminListen, "admin-listen", "", `admin API address: "" = same as --listen, "off" = disabled`)
	fs.StringVar(&c.projectID, "project-id", envOr("KMS_EMULATOR_PROJECT_ID", kmstest.DefaultProjectID), "project_id served (env KMS_EMULATOR_PROJECT_ID)")
	fs.StringVar(&c.keysFile, "keys", "", "seed file: a JSON array of keys (see hack/kms-emulator/sample-keys.json)")
	fs.StringVar(&c.shape, "shape", "schema", "response shape: schema or example")
	fs.Func("token", "accepted X-Auth-Token (repeatable; env KMS_EMULATOR_TOKEN)", func(v string) error {
		c.tokens = append(c.tokens, v)
		return nil
	})
	fs.StringVar(&c.accessKey, "access-key", os.Getenv("KMS_EMULATOR_ACCESS_KEY"), "accepted access key (env KMS_EMULATOR_ACCESS_KEY)")
	fs.StringVar(&c.secretKey, "secret-key", "", "secret key of --access-key (env KMS_EMULATOR_SECRET_KEY)")
	fs.StringVar(&c.securityToken, "security-token", "", "makes --access-key temporary credentials (env KMS_EMULATOR_SECURITY_TOKEN)")
	fs.BoolVar(&c.noAuth, "no-auth", false, "accept requests without credentials")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "TLS certificate file (with --tls-key); plain HTTP without")
	fs.StringVar(&c.tlsKey, "tls-key", "", "TLS key file")
	fs.BoolVar(&c.quiet, "quiet", false, "do not log requests")
	fs.BoolVar(&c.iam, "iam", true, "serve the IAM, ECS metadata and pod identity routes on the --listen port")
	fs.DurationVar(&c.credentialLifetime, "credential-lifetime", iamtest.DefaultCredentialLifetime, "lifetime of the temporary credentials the IAM routes issue")
	fs.StringVar(&c.podIdentityToken, "pod-identity-token", "", "pod identity Authorization token, associated with --project-id (env KMS_EMULATOR_POD_IDENTITY_TOKEN)")
	fs.BoolVar(&c.nodeAgency, "node-agency", false, "give the node an agency for --project-id: the metadata service issues credentials")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	// Secrets from the environment, so they need not appear on command lines.
	if t := os.Getenv("KMS_EMULATOR_TOKEN"); t != "" {
		c.tokens = append(c.tokens, t)
	}
	c.secretKey = firstNonEmpty(c.secretKey, os.Getenv("KMS_EMULATOR_SECRET_KEY"))
	c.securityToken = firstNonEmpty(c.securityToken, os.Getenv("KMS_EMULATOR_SECURITY_TOKEN"))
	c.podIdentityToken = firstNonEmpty(c.podIdentityToken, os.Getenv("KMS_EMULATOR_POD_IDENTITY_TOKEN"))
	return c, c.check()
}

func (c config) check() error {
	if (c.accessKey == "") != (c.secretKey == "") {
		return errors.New("--access-key and --secret-key go together")
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if c.credentialLifetime <= 0 {
		return errors.New("--credential-lifetime must be positive")
	}
	if !c.iam && (c.podIdentityToken != "" || c.nodeAgency) {
		return errors.New("--pod-identity-token and --node-agency need --iam")
	}
	return nil
}

// newIAM returns the IAM the binary serves, trusted by emu, or nil with --iam=false. A nil
// logger logs nothing.
func (c config) newIAM(emu *kmstest.Emulator, logger *slog.Logger) *iamtest.IAM {
	if !c.iam {
		return nil
	}
	opts := []iamtest.Option{iamtest.WithCredentialLifetime(c.credentialLifetime)}
	if logger != nil {
		opts = append(opts, iamtest.WithLogger(logger))
	}
	iam := iamtest.New(opts...)
	iam.Trust(emu)
	if c.nodeAgency {
		iam.SetNodeAgency(emu.ProjectID())
	}
	if c.podIdentityToken != "" {
		iam.SetPodIdentity(c.podIdentityToken, emu.ProjectID())
	}
	return iam
}

// options turns the configuration into emulator options.
func (c config) options(logger *slog.Logger) ([]kmstest.Option, error) {
	shape, err := kmstest.ParseShape(c.shape)
	if err != nil {
		return nil, err
	}
	opts := []kmstest.Option{kmstest.WithProjectID(c.projectID), kmstest.WithShape(shape), kmstest.WithToken(c.tokens...)}
	if c.accessKey != "" {
		opts = append(opts, kmstest.WithAKSK(c.accessKey, c.secretKey, c.securityToken))
	}
	if c.noAuth {
		opts = append(opts, kmstest.WithAuthDisabled())
	}
	if logger != nil {
		opts = append(opts, kmstest.WithLogger(logger))
	}
	return opts, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	var logger *slog.Logger
	if !c.quiet {
		logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	opts, err := c.options(logger)
	if err != nil {
		return err
	}
	emu := kmstest.New(opts...)
	if c.keysFile != "" {
		if err := emu.LoadKeysFile(c.keysFile); err != nil {
			return err
		}
	}
	if len(c.tokens) == 0 && c.accessKey == "" && !c.noAuth && !c.iam {
		fmt.Fprintln(stderr, "kms-emulator: warning: no --token, --access-key, --no-auth or --iam: every request will get 403")
	}
	return serve(ctx, c, emu, c.newIAM(emu, logger), stdout)
}

// iamPaths are the paths of the IAM routes.
var iamPaths = []string{
	iamtest.PathIDToken, iamtest.PathSecurityTokens, iamtest.PathMetadataToken,
	iamtest.PathSecurityKey, iamtest.PathPodIdentity,
}

// handlers returns the handlers of the API listener and of the admin listener (nil when the
// admin API is off or shares the API listener). A nil iam serves no IAM routes.
func handlers(c config, emu *kmstest.Emulator, iam *iamtest.IAM) (api, admin http.Handler) {
	kms, kmsAdmin := http.Handler(emu), emu.AdminHandler()
	if c.adminListen == "" {
		kms = emu.Handler()
	}
	if iam == nil {
		if c.adminListen != "" && c.adminListen != "off" {
			admin = kmsAdmin
		}
		return kms, admin
	}
	iamAdmin := iam.AdminHandler()
	adminBoth := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, iamtest.AdminPrefix) {
			iamAdmin.ServeHTTP(w, r)
			return
		}
		kmsAdmin.ServeHTTP(w, r)
	})
	api = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case slices.Contains(iamPaths, r.URL.Path):
			iam.ServeHTTP(w, r)
		case c.adminListen == "" && strings.HasPrefix(r.URL.Path, iamtest.AdminPrefix):
			iamAdmin.ServeHTTP(w, r)
		default:
			kms.ServeHTTP(w, r)
		}
	})
	if c.adminListen != "" && c.adminListen != "off" {
		admin = adminBoth
	}
	return api, admin
}

// serve runs the API (and admin) listeners until ctx ends, then shuts them down.
func serve(ctx context.Context, c config, emu *kmstest.Emulator, iam *iamtest.IAM, stdout io.Writer) error {
	apiHandler, adminHandler := handlers(c, emu, iam)
	var servers []*http.Server
	if adminHandler != nil {
		servers = append(servers, &http.Server{Addr: c.adminListen, Handler: adminHandler, ReadHeaderTimeout: 10 * time.Second})
	}
	api := &http.Server{Addr: c.listen, Handler: apiHandler, ReadHeaderTimeout: 10 * time.Second}
	servers = append([]*http.Server{api}, servers...)

	errc := make(chan error, len(servers))
	for i, srv := range servers {
		ln, err := net.Listen("tcp", srv.Addr)
		if err != nil {
			shutdown(servers[:i])
			return fmt.Errorf("listen: %w", err)
		}
		tls := i == 0 && c.tlsCert != ""
		printURL(stdout, i == 0, tls, ln.Addr().String(), emu, iam != nil, c.adminListen)
		go func() { errc <- serveOne(srv, ln, tls, c) }()
	}
	select {
	case <-ctx.Done():
		shutdown(servers)
		fmt.Fprintln(stdout, "kms-emulator: stopped")
		return nil
	case err := <-errc:
		shutdown(servers)
		return err
	}
}

func serveOne(srv *http.Server, ln net.Listener, tls bool, c config) error {
	var err error
	if tls {
		err = srv.ServeTLS(ln, c.tlsCert, c.tlsKey)
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serve %s: %w", ln.Addr(), err)
}

func printURL(w io.Writer, api, tls bool, addr string, emu *kmstest.Emulator, iam bool, adminListen string) {
	scheme := "http"
	if tls {
		scheme = "https"
	}
	base := scheme + "://" + addr
	if !api {
		fmt.Fprintf(w, "kms-emulator admin API (unauthenticated) on %s/admin/\n", base)
		return
	}
	fmt.Fprintf(w, "kms-emulator serving %s (project %s, %d keys, shape %s)\n", base, emu.ProjectID(), emu.KeyCount(), emu.Shape())
	fmt.Fprintf(w, "  ListKmsByTags: POST %s%s\n", base, emu.ActionPath())
	if iam {
		fmt.Fprintf(w, "  IAM, ECS metadata and pod identity: %s (POST %s)\n", base, iamtest.PathIDToken)
	}
	if adminListen == "" {
		fmt.Fprintf(w, "  admin API (unauthenticated, local use only): %s/admin/\n", base)
	}
}

func shutdown(servers []*http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		_ = srv.Shutdown(ctx)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
