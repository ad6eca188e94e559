package testkit

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ModulePath is the module whose go.mod marks the repository root.
const ModulePath = "github.com/kms-key-sync/kms-key-sync"

// RepoRoot returns the repository root: the nearest directory, from the working directory up,
// whose go.mod declares ModulePath. Tests run in their package's directory and programs from
// the root, so the working directory finds it from anywhere in the repository.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the repository root: %w", err)
	}
	return repoRootFrom(dir)
}

func repoRootFrom(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("finding the repository root: %w", err)
	}
	for start := dir; ; {
		ok, err := declaresModule(filepath.Join(dir, "go.mod"))
		if err != nil {
			return "", fmt.Errorf("finding the repository root: %w", err)
		}
		if ok {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s in %s or above", ModulePath, start)
		}
		dir = parent
	}
}

// declaresModule reports whether the go.mod at path exists and declares ModulePath.
func declaresModule(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`) == ModulePath, nil
		}
	}
	return false, s.Err()
}
