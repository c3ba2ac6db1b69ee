/*
 * Installed set-uid root in the nonewprivs image: with no_new_privs the
 * set-uid bit is ignored and the caller's uid is printed, without it 0.
 */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    printf("Effective uid: %u\n", (unsigned)geteuid());
    return 0;
}
