package main

import (
	"flag"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// readmeFlags reads the README's flag table: flag name to its documented default.
func readmeFlags(t *testing.T) map[string]string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `--([a-z-]+)` \\|([^|]*)\\|")
	out := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		out[m[1]] = strings.Trim(strings.TrimSpace(m[2]), "`")
	}
	return out
}

func TestReadmeDocumentsEveryFlagWithItsDefault(t *testing.T) {
	documented := readmeFlags(t)
	fs := newFlagSet(&flags{})
	fs.VisitAll(func(fl *flag.Flag) {
		def, ok := documented[fl.Name]
		if !ok {
			t.Errorf("--%s is not in the README's flag table", fl.Name)
			return
		}
		delete(documented, fl.Name)
		if strings.HasPrefix(fl.Name, "zap-") || fl.DefValue == "" {
			return // zap's flags have no printable default; an empty one reads "all" or blank.
		}
		if d, err := time.ParseDuration(def); err == nil {
			if got, _ := time.ParseDuration(fl.DefValue); got == d {
				return
			}
		}
		if def != fl.DefValue {
			t.Errorf("--%s defaults to %q, the README says %q", fl.Name, fl.DefValue, def)
		}
	})
	for name := range documented {
		t.Errorf("the README documents --%s, which the operator does not have", name)
	}
}

func TestParseFlagsRejectsBadValues(t *testing.T) {
	for _, args := range [][]string{
		{"--kms-qps=-1"},
		{"--kms-burst=0"},
		{"--max-concurrent-reconciles=0"},
		{"--coalesce-window=10s"},
		{"--coalesce-window=0s"},
		{"stray-argument"},
		{"--allowed-iam-hosts="},
		{"--allowed-iam-hosts=https://iam.example"},
		{"--allowed-iam-hosts=iam.*x.example"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%v) accepted it", args)
		}
	}
	f, err := parseFlags([]string{"--watch-namespaces= team-a, ,team-b", "--leader-elect"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(f.WatchNamespaces, ",") != "team-a,team-b" || !f.LeaderElection {
		t.Errorf("parsed %+v", f.Options)
	}
	if got := strings.Join(f.AllowedIAMHosts, ","); got != "iam.myhuaweicloud.com,iam.*.myhuaweicloud.com,iam.*.myhuaweicloud.eu" {
		t.Errorf("--allowed-iam-hosts defaults to %q, want Huawei Cloud's IAM hosts only", got)
	}
	f, err = parseFlags([]string{"--allowed-iam-hosts=iam.example, 127.0.0.1:*"}, io.Discard)
	if err != nil || strings.Join(f.AllowedIAMHosts, ",") != "iam.example,127.0.0.1:*" {
		t.Errorf("--allowed-iam-hosts=iam.example,127.0.0.1:* parsed to %v, %v", f.AllowedIAMHosts, err)
	}
}
