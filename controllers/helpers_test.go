package controllers_test

import (
	"context"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// newFixture returns a fixture of the suite's API server whose emulator stops when the spec ends.
func newFixture(opts ...kmstest.Option) *testkit.Fixture {
	GinkgoHelper()
	f := testkit.NewFixture(Default, k8sClient, "test", opts...)
	DeferCleanup(f.Close)
	return f
}

func ctx() context.Context { return context.Background() }
