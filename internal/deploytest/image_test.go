package deploytest

import (
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// readDockerfile returns the Dockerfile's lines, continuation lines joined.
func readDockerfile() []string {
	GinkgoHelper()
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	Expect(err).NotTo(HaveOccurred())
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// dockerBuildCommand returns the shell command of the Dockerfile's RUN that builds the manager.
func dockerBuildCommand() string {
	GinkgoHelper()
	var found []string
	for _, l := range readDockerfile() {
		if strings.HasPrefix(l, "RUN ") && strings.Contains(l, "go build") {
			found = append(found, strings.TrimPrefix(l, "RUN "))
		}
	}
	Expect(found).To(HaveLen(1), "want one RUN ... go build in the Dockerfile")
	return found[0]
}

var ldflagsPattern = regexp.MustCompile(`-ldflags "([^"]*)"`)

// dockerignored says whether .dockerignore keeps a path (relative, slash-separated) out of the
// build context, as Docker does: the last pattern matching the path or one of its parents wins.
func dockerignored(patterns []string, path string) bool {
	ignored := false
	for _, p := range patterns {
		negate := strings.HasPrefix(p, "!")
		p = strings.TrimSuffix(strings.TrimPrefix(p, "!"), "/")
		re := regexp.MustCompile("^" + globToRegexp(p) + "$")
		parts := strings.Split(path, "/")
		for i := range parts {
			if re.MatchString(strings.Join(parts[:i+1], "/")) {
				ignored = !negate
				break
			}
		}
	}
	return ignored
}

// globToRegexp turns a .dockerignore pattern into a regular expression.
func globToRegexp(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch {
		case strings.HasPrefix(p[i:], "**/"):
			b.WriteString("(.*/)?")
			i += 2
		case strings.HasPrefix(p[i:], "**"):
			b.WriteString(".*")
			i++
		case p[i] == '*':
			b.WriteString("[^/]*")
		case p[i] == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		}
	}
	return b.String()
}

var _ = Describe("The Dockerfile", func() {
	It("builds the manager with the same flags as make build", func() {
		build := dockerBuildCommand()
		Expect(build).To(ContainSubstring("CGO_ENABLED=0"))
		Expect(build).To(ContainSubstring("go build -trimpath "))
		m := ldflagsPattern.FindStringSubmatch(build)
		Expect(m).NotTo(BeNil(), "no -ldflags \"...\" in %s", build)
		makeLDFlags := strings.NewReplacer("$(VERSION)", "${VERSION}", "$(COMMIT)", "${COMMIT}").Replace(makefileVar("LDFLAGS"))
		Expect(m[1]).To(Equal(makeLDFlags))
		Expect(m[1]).To(Equal("-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}"))

		makefile, err := os.ReadFile(filepath.Join(root, "Makefile"))
		Expect(err).NotTo(HaveOccurred())
		Expect(string(makefile)).To(ContainSubstring(`CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)"`))
		Expect(string(makefile)).To(ContainSubstring("--build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT)"))
		Expect(readDockerfile()).To(ContainElements("ARG VERSION=dev", "ARG COMMIT=unknown"))
	})

	It("runs as non-root from a distroless image, with /manager as entrypoint", func() {
		lines := readDockerfile()
		Expect(lines[0]).To(MatchRegexp(`^FROM golang:1\.26 AS builder$`))
		var final []string
		for i, l := range lines {
			if strings.HasPrefix(l, "FROM ") {
				final = lines[i:]
			}
		}
		Expect(final[0]).To(Equal("FROM gcr.io/distroless/static:nonroot"))
		Expect(final).To(ContainElement("COPY --from=builder /workspace/manager ."))
		Expect(final).To(ContainElement("USER 65532:65532"))
		Expect(final[len(final)-1]).To(Equal(`ENTRYPOINT ["/manager"]`))
	})

	It("copies every source file of the manager into the build, and .dockerignore keeps them", func() {
		var sources []string
		for _, l := range readDockerfile() {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "COPY" {
				sources = append(sources, strings.TrimSuffix(f[1], "/"))
			}
		}
		Expect(sources).To(ContainElements("go.mod", "go.sum"))
		data, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
		Expect(err).NotTo(HaveOccurred())
		var patterns []string
		for _, l := range strings.Split(string(data), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				patterns = append(patterns, l)
			}
		}
		Expect(dockerignored(patterns, "go.mod")).To(BeFalse())
		Expect(dockerignored(patterns, "bin/manager")).To(BeTrue())

		// Every non-test Go file of the module's packages in the binary, and no embedded files.
		out := mustRun("go", "list", "-deps", "-f", `{{if .Module}}{{if .Module.Main}}{{.Dir}}|{{join .GoFiles ","}}|{{len .EmbedFiles}}{{end}}{{end}}`, ".")
		var files []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Split(l, "|")
			Expect(f).To(HaveLen(3))
			Expect(f[2]).To(Equal("0"), "%s embeds files, which the Dockerfile must copy too", f[0])
			rel, err := filepath.Rel(root, f[0])
			Expect(err).NotTo(HaveOccurred())
			for _, name := range strings.Split(f[1], ",") {
				files = append(files, filepath.ToSlash(filepath.Join(rel, name)))
			}
		}
		Expect(files).To(ContainElement("main.go"))
		for _, f := range files {
			copied := false
			for _, s := range sources {
				copied = copied || f == s || strings.HasPrefix(f, s+"/")
			}
			Expect(copied).To(BeTrue(), "the Dockerfile does not COPY %s", f)
			Expect(dockerignored(patterns, f)).To(BeFalse(), ".dockerignore leaves out %s", f)
		}
	})
})

var _ = Describe("The manager binary that make build writes", Ordered, func() {
	var manager string

	BeforeAll(func() {
		manager = filepath.Join(root, "bin", "manager")
		Expect(manager).To(BeAnExistingFile(), "run `make build` (make test builds it first)")
	})

	It("was built with the Makefile's flags: -trimpath, CGO_ENABLED=0 and LDFLAGS", func() {
		info, err := buildinfo.ReadFile(manager)
		Expect(err).NotTo(HaveOccurred())
		settings := map[string]string{}
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
		Expect(settings).To(HaveKeyWithValue("-trimpath", "true"))
		Expect(settings).To(HaveKeyWithValue("CGO_ENABLED", "0"))
		Expect(makefileVar("LDFLAGS")).To(HavePrefix("-s -w "))
		// -s leaves out the symbol table and -w the DWARF data.
		bin, err := elf.Open(manager)
		Expect(err).NotTo(HaveOccurred())
		_, symbolsErr := bin.Symbols()
		debugInfo := bin.Section(".debug_info")
		Expect(bin.Close()).To(Succeed())
		Expect(symbolsErr).To(MatchError(elf.ErrNoSymbols))
		Expect(debugInfo).To(BeNil())

		// -X stamps the version and the commit that the Makefile reads from git, and the binary
		// logs them at start. Files edited since the build may have dirtied the version.
		version, commit := startupVersion(manager)
		stale := "bin/manager was built from another commit: run `make build`"
		Expect(commit).To(Equal(makefileShell("COMMIT")), stale)
		Expect(strings.TrimSuffix(version, "-dirty")).To(Equal(strings.TrimSuffix(makefileShell("VERSION"), "-dirty")), stale)
	})

	It("prints its flags with --help and exits 0", func() {
		stdout, stderr, err := command(manager, "--help")
		Expect(err).NotTo(HaveOccurred(), stderr)
		help := stdout + stderr
		for _, flag := range []string{
			"allow-insecure-endpoints", "allowed-iam-hosts", "max-concurrent-reconciles", "sync-timeout", "kms-request-timeout",
			"kms-qps", "kms-burst", "watch-namespaces", "kms-ca-file", "leader-elect", "metrics-bind-address",
			"metrics-secure", "health-probe-bind-address", "zap-log-level",
		} {
			Expect(help).To(MatchRegexp(`(?m)^\s+-`+regexp.QuoteMeta(flag)+`\b`), "--help does not list --%s", flag)
		}
	})

	It("accepts the arguments every Deployment passes it", func() {
		for name, ms := range map[string]manifests{
			"kustomize config/default":    kustomizeBuild("config/default"),
			"helm, default values":        helmTemplate(),
			"helm, every value set":       helmTemplate("-f", valuesAll),
			"helm, metrics.enabled=false": helmTemplate("--set", "metrics.enabled=false"),
		} {
			c := managerContainer(ms.onlyDeployment())
			Expect(c.Command).To(Equal([]string{"/manager"}))
			// The flags are parsed in order; --help last stops before the manager starts.
			stdout, stderr, err := command(manager, append(c.Args, "--help")...)
			Expect(err).NotTo(HaveOccurred(), "%s: the manager rejects %v:\n%s%s", name, c.Args, stdout, stderr)
		}
		_, _, err := command(manager, "--no-such-flag", "--help")
		Expect(err).To(HaveOccurred(), "the check above must be able to fail")
	})
})

// makefileShell runs the command of a Makefile variable whose default is `$(shell command)`, as
// make would, and returns its output.
func makefileShell(name string) string {
	GinkgoHelper()
	command, ok := strings.CutPrefix(makefileVar(name), "$(shell ")
	Expect(ok).To(BeTrue(), "the Makefile's %s is no $(shell ...)", name)
	return strings.TrimSpace(mustRun("sh", "-c", strings.TrimSuffix(command, ")")))
}

// startupVersion runs the manager without a cluster to talk to: it logs its version and commit,
// then fails to load a kubeconfig. It returns the version and the commit.
func startupVersion(manager string) (string, string) {
	GinkgoHelper()
	home := GinkgoT().TempDir()
	cmd := exec.Command(manager)
	cmd.Env = []string{"HOME=" + home, "KUBECONFIG=" + filepath.Join(home, "missing")}
	out, err := cmd.CombinedOutput()
	Expect(err).To(HaveOccurred(), "%s", out)
	var found []string
	for _, key := range []string{"version", "commit"} {
		m := regexp.MustCompile(`"` + key + `":"([^"]*)"`).FindSubmatch(out)
		Expect(m).NotTo(BeNil(), "no %s in:\n%s", key, out)
		found = append(found, string(m[1]))
	}
	return found[0], found[1]
}
