package dbtest

import (
	"log"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// RunForeground runs argv with env added (KEY=value each) and returns its
// exit status, for the dev wrappers (pgenv, lockstep-stripefake) that run
// a command around what they set up. The command stays in the foreground:
// a Ctrl-C reaches it from the terminal and the wrapper waits for it, so
// the wrapper can clean up after; SIGTERM and SIGHUP sent to the wrapper
// alone are passed on. A start failure is 127, a death by signal 128+N.
func RunForeground(logger *log.Logger, argv []string, env ...string) int {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), env...)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		logger.Print(err)
		return 127
	}
	go func() {
		for s := range sigs {
			if s != os.Interrupt {
				_ = cmd.Process.Signal(s)
			}
		}
	}()
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if err != nil && cmd.ProcessState.ExitCode() <= 0 {
		logger.Print(err)
		return 1
	}
	return cmd.ProcessState.ExitCode()
}
