package dbtest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
	"time"
)

// Owner is the user the private servers (clusters, the fault tests'
// PgBouncer) run as: the caller, or the postgres user when the caller is
// root, since initdb, postgres and pgbouncer refuse root. The zero value is
// the caller.
type Owner struct {
	cred *syscall.Credential
}

// ServerOwner returns the Owner for this process.
func ServerOwner() (Owner, error) {
	if os.Geteuid() != 0 {
		return Owner{}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return Owner{}, errors.New("running as root, and initdb refuses root, but there is no 'postgres' user to run it as; " +
			"create one (useradd --system --create-home postgres), run as another user, or set TEST_DATABASE_URL / DATABASE_URL")
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return Owner{}, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return Owner{}, err
	}
	return Owner{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, nil
}

// Command builds a command that runs as the owner, in /, in its own process
// group (so a Ctrl-C meant for the tests does not reach the server).
func (o Owner) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: o.cred}
	if o.cred != nil {
		cmd.Env = append(os.Environ(), "HOME=/tmp")
	}
	return cmd
}

// MkdirTemp makes a new directory the owner owns, in TMPDIR, or in /tmp
// when the owner cannot reach TMPDIR (root's may be under /root).
func (o Owner) MkdirTemp(pattern string) (string, error) {
	for _, base := range []string{os.TempDir(), "/tmp"} {
		dir, err := os.MkdirTemp(base, pattern)
		if err != nil {
			return "", err
		}
		if err := o.chown(dir); err != nil {
			return "", errors.Join(err, os.RemoveAll(dir))
		}
		if o.reaches(dir) {
			return dir, nil
		}
		_ = os.RemoveAll(dir)
	}
	return "", errors.New("user postgres can reach neither TMPDIR nor /tmp")
}

// WriteFile writes a file the owner owns.
func (o Owner) WriteFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return o.chown(path)
}

func (o Owner) chown(path string) error {
	if o.cred == nil {
		return nil
	}
	return os.Chown(path, int(o.cred.Uid), int(o.cred.Gid))
}

// reaches reports whether the owner can enter dir.
func (o Owner) reaches(dir string) bool {
	if o.cred == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return o.Command(ctx, "test", "-x", dir).Run() == nil
}
